"""Property-based API test: schemathesis generates requests from the server's own OpenAPI spec and
sends them to a real uvicorn server; no request may end in a 5xx and every response must match the
documented schema. Bounded (few examples per operation) to stay well under a minute."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recloop.store import FileStore
from support.serving_helpers import API_KEY, ServerThread, fit_mf, make_dataset, publish, running, serving_config

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp: Path = tmp_path_factory.mktemp("schema")
    store = FileStore(f"file://{tmp / 'store'}")
    data = make_dataset()
    publish(store, fit_mf(data), data, tmp, "run-1")
    # Rules on, so the fuzzing exercises the whole slate path (pool, MMR, caps, exploration).
    settings_ = serving_config(
        rules={"mmr_lambda": 0.7, "max_per_category": 3, "excluded_items": ["item-2"]}, exploration={"epsilon": 0.1}
    )
    with running(store, settings_) as srv:
        yield srv


def test_no_server_errors_and_responses_match_the_spec(server: ServerThread) -> None:
    # Driven through hypothesis directly: schemathesis' pytest plugin does not support this pytest yet.
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/recommendations", "/v1/items/{item_id}/similar", "/v1/feedback"}
    for operation in operations:
        # Feedback and admin calls carry a valid key half the time, so both the 401 and the accepted paths
        # are fuzzed.
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
        )
        @given(case=operation.as_strategy(), with_key=st.booleans())
        def check(case, with_key: bool) -> None:
            response = case.call(base_url=server.url, headers={"X-API-Key": API_KEY} if with_key else {})
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            )
            case.validate_response(response)

        check()


def test_every_schemathesis_check_passes(server: ServerThread, tmp_path: Path) -> None:
    # The CLI with `--checks all`: besides server errors and response schemas, it checks that invalid bodies
    # are refused and valid ones accepted, the Allow header of a 405, auth, and stateful links.
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [str(cli), "run", f"{server.url}/openapi.json", "--checks", "all", "--max-examples", "25", "--seed", "1"]
        + ["-H", f"X-API-Key: {API_KEY}", "--no-color"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # the CLI keeps its state in ./.schemathesis
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout


def test_spec_and_behaviour_agree_where_schemathesis_found_them_apart(server: ServerThread) -> None:
    import httpx

    # A 405 names every method of the path (Starlette alone names only the first route's: GET, not POST).
    refused = httpx.request("OPTIONS", f"{server.url}/v1/recommendations", timeout=30)
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET, POST"
    # A JSON number is a number: no true for 1 nor "5" for 5; 5.0 is the integer 5, as JSON Schema says.
    url, key = f"{server.url}/v1/recommendations", {"X-API-Key": API_KEY}
    assert httpx.post(url, json={"history": ["item-1"], "k": 5.0}, headers=key, timeout=30).status_code == 200
    for k in ("5", True):
        wrong = httpx.post(url, json={"history": ["item-1"], "k": k}, headers=key, timeout=30)
        assert wrong.status_code == 422 and "expected a JSON number" in wrong.text, (k, wrong.text)
    event = {"item_id": "item-1", "event_type": "click"}
    for field, bad in (("value", False), ("position", "3")):
        wrong = httpx.post(
            f"{server.url}/v1/feedback", json={"events": [{**event, field: bad}]}, headers=key, timeout=30
        )
        assert wrong.status_code == 422 and "expected a JSON number" in wrong.text, (field, wrong.text)

    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    # The Bearer form the server accepts is declared beside X-API-Key.
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} >= {"apiKey", "http"}
    assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values())
    # The 400 FastAPI gives an unparsable body is documented on both POST routes, and is what happens.
    for path in ("/v1/recommendations", "/v1/feedback"):
        assert "400" in spec["paths"][path]["post"]["responses"], path
        sent = httpx.post(
            f"{server.url}{path}",
            content=b"user_id=u1",
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-API-Key": API_KEY},
            timeout=30,
        )
        assert sent.status_code in (400, 422), (path, sent.status_code, sent.text)
        assert str(sent.status_code) in spec["paths"][path]["post"]["responses"]
    # A feedback timestamp is an ISO 8601 string, as the spec says: an epoch number is refused.
    event = {"item_id": "item-1", "event_type": "click"}
    refused = httpx.post(
        f"{server.url}/v1/feedback",
        json={"events": [{**event, "timestamp": 1700000000}]},
        headers={"X-API-Key": API_KEY},
        timeout=30,
    )
    assert refused.status_code == 422 and "ISO 8601" in refused.text
    accepted = httpx.post(
        f"{server.url}/v1/feedback",
        json={"events": [{**event, "timestamp": "2026-01-31T12:00:00Z"}]},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert accepted.status_code == 202, accepted.text
