"""Code the tests share, imported as `support.<module>` from every test folder (pytest's `pythonpath`
in pyproject.toml puts tests/ on sys.path). Fixtures stay in tests/conftest.py; these modules hold what
fixtures and tests build on. Test modules never import each other: what two of them share lives here.

paths            the repository root, for tests that read shipped files (configs, docs, charts, docker).
net              a free loopback port for servers a test starts.
s3               `S3Server`: a SeaweedFS S3 endpoint started for the `s3_server` fixture.
encoders         the tiny random-weight text encoder behind the `tiny_encoder` fixture.
helpers          typed configs, step contexts, contract-conforming ingest artifacts, a tiny model, and a
                 config over freshly generated synthetic data (`synthetic_pipeline`).
eval_helpers     preprocess / train artifacts, test-only models and ready runs for evaluate, gate, report.
model_contract   `ModelContract`: the behaviour every model promises, as a pytest mixin, and its data.
policy_helpers   a small model published to the registry, as the bandit policy sees it.
feedback_helpers impression and feedback records, written through serving's own event log.
serving_helpers  a structured dataset, published versions and a real uvicorn server.
"""
