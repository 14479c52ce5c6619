"""Airflow DAGs for every recloop pipeline config: `{name}_train` and `{name}_feedback` per config in
RECLOOP_CONFIG_DIR (default: the repository's `configs/`). Wiring only; see recloop.orchestration.factory.
"""

from __future__ import annotations

import os
from pathlib import Path

from recloop.orchestration.factory import build_dags

# This file is the edge: the environment is read here and nowhere below.
_DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_DIR = Path(os.environ.get("RECLOOP_CONFIG_DIR") or _DEFAULT_CONFIG_DIR)
if not CONFIG_DIR.is_absolute():
    CONFIG_DIR = Path(__file__).resolve().parent.parent / CONFIG_DIR

globals().update(build_dags(CONFIG_DIR))
