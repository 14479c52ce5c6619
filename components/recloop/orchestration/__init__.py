"""Airflow orchestration of recloop pipelines: the DAG factory (`factory`), the task callables run
in-process (`tasks`), the container operators for the kubernetes and docker modes (`containers`),
failure records and run notes (`callbacks`) and run parameters (`params`). `make up/down` is a
developer tool outside the runtime package: `recloop_dev.local_stack`.

Only `containers` imports Airflow at module level (its operators subclass Airflow's); every other module
imports it inside the functions that need it, so importing `factory`, `tasks`, `params` or `callbacks`
stays cheap. This package is the only one in recloop that imports Airflow (an import-linter contract in
pyproject.toml).
"""
