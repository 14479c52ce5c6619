"""Developer tools for working on recloop from a checkout (not part of the runtime package or the image).

`local_stack`: `make up` / `make down`, a local Airflow plus SeaweedFS S3 serving the repository's DAGs.
`code_map`: the generated steps table and code map of docs/architecture.md (`make docs`).
"""
