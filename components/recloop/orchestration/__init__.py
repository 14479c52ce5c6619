"""Airflow orchestration of recloop pipelines: the DAG factory (`factory`), the task callables run
in-process (`tasks`), the container operators for the kubernetes and docker modes (`containers`),
failure records and run notes (`callbacks`) and run parameters (`params`). `make up/down` is a
developer tool outside the runtime package: `recloop_dev.local_stack`.

Nothing here imports Airflow at module level except `containers` and `factory`'s build functions,
which import it inside the functions that need it, so `import recloop.orchestration.*` stays cheap.
"""
