"""Small shared test utilities: typed configs, step contexts, contract-conforming ingest artifacts and a
tiny registered model.

`write_ingest_artifact` commits `runs/{run_id}/ingest/` exactly as the ingest step's contract describes
(column names and Arrow types), so downstream steps can be tested without running ingest. `CountsModel`
(type `test_counts`) is a real, saveable Recommender for tests of the registry and the publish step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recloop.artifacts import ArtifactWriter, run_prefix
from recloop.config import PipelineConfig, StoreConfig, apply_overrides
from recloop.config.models import ModelConfig
from recloop.data.interactions import Histories, Interactions
from recloop.models import registry
from recloop.models.base import FitContext, Recommender
from recloop.models.registry import register
from recloop.steps.base import StepContext
from recloop.store import ArtifactStore, open_store

INTERACTION_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("rating", pa.float64()),
        ("event_type", pa.string()),
        ("weight", pa.float64()),
    ]
)
TRAILER_SCHEMA = pa.schema([("source_file", pa.string()), ("source_row", pa.int64()), ("ingest_issue", pa.string())])


def make_config(
    store: str | Path | StoreConfig, overrides: dict[str, Any] | None = None, name: str = "test"
) -> PipelineConfig:
    """A validated config on `store` (a directory, a store URI or a StoreConfig, e.g. the S3 fixture's).

    `overrides` use dotted keys. Validated with the base `PipelineConfig` so tests of data steps do not
    import every model module.
    """
    if isinstance(store, StoreConfig):
        store_section: Any = store
    else:
        root = str(store)
        store_section = {"root": root if "://" in root else f"file://{Path(root).resolve()}"}
    raw: dict[str, Any] = {
        "name": name,
        "store": store_section,
        "data": {"interactions": {"path": "/nonexistent/events.csv"}},
    }
    if overrides:
        raw = apply_overrides(raw, dict(overrides))
    return PipelineConfig.model_validate(raw)


def make_context(
    cfg: PipelineConfig, run_id: str = "r1", store: ArtifactStore | None = None, log: list[str] | None = None
) -> StepContext:
    """A StepContext on cfg's store; with `log`, messages are appended to that list."""
    ctx = StepContext(config=cfg, store=store or open_store(cfg.store), run_id=run_id)
    if log is not None:
        ctx.log = log.append
    return ctx


def _to_utc_ms(values: pd.Series) -> pd.Series:
    """Epoch seconds, ISO strings or datetimes -> datetime64[ms, UTC] (nulls stay null)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        out = pd.to_datetime(values, unit="s", utc=True)
    else:
        out = pd.to_datetime(values, utc=True, format="ISO8601")
    return out.astype("datetime64[ms, UTC]")


def interactions_table(df: pd.DataFrame, source_file: str = "events.csv") -> pa.Table:
    """A contract-conforming interactions table from a frame with at least user_id, item_id, timestamp.

    Missing optional columns are filled: rating / event_type / weight / ingest_issue null, source_file
    `source_file`, source_row 1..n. Ids become strings (null stays null); `ctx_*` columns are kept.
    """
    df = df.reset_index(drop=True)
    n = len(df)
    cols: dict[str, pa.Array] = {}
    for name in ("user_id", "item_id"):
        cols[name] = pa.array([None if pd.isna(v) else str(v) for v in df[name]], pa.string())
    cols["timestamp"] = pa.array(_to_utc_ms(df["timestamp"]), pa.timestamp("ms", tz="UTC"))
    for name, typ in (("rating", pa.float64()), ("event_type", pa.string()), ("weight", pa.float64())):
        values = df[name].tolist() if name in df else [None] * n
        cols[name] = pa.array([None if v is None or (isinstance(v, float) and pd.isna(v)) else v for v in values], typ)
    fields = list(INTERACTION_SCHEMA)
    for name in df.columns:
        if str(name).startswith("ctx_"):
            cols[name] = pa.array(df[name].astype(object).where(df[name].notna(), None).tolist())
            fields.append(pa.field(name, cols[name].type))
    cols["source_file"] = pa.array(
        df["source_file"].tolist() if "source_file" in df else [source_file] * n, pa.string()
    )
    cols["source_row"] = pa.array(
        df["source_row"].tolist() if "source_row" in df else list(range(1, n + 1)), pa.int64()
    )
    issues = df["ingest_issue"].tolist() if "ingest_issue" in df else [None] * n
    cols["ingest_issue"] = pa.array(
        [None if v is None or (isinstance(v, float) and pd.isna(v)) else v for v in issues], pa.string()
    )
    fields.extend(TRAILER_SCHEMA)
    return pa.Table.from_arrays([cols[f.name] for f in fields], schema=pa.schema(fields))


def items_table(df: pd.DataFrame) -> pa.Table:
    """A contract-conforming catalog: item_id, text (default: the id), categories list<string>, rest as str."""
    df = df.reset_index(drop=True)
    ids = [None if pd.isna(v) else str(v) for v in df["item_id"]]
    text = df["text"].tolist() if "text" in df else [i or "" for i in ids]
    cats = df["categories"].tolist() if "categories" in df else [[] for _ in ids]
    arrays = [pa.array(ids, pa.string()), pa.array(text, pa.string()), pa.array(cats, pa.list_(pa.string()))]
    names = ["item_id", "text", "categories"]
    for name in df.columns:
        if name not in names:
            arrays.append(pa.array([None if pd.isna(v) else str(v) for v in df[name]], pa.string()))
            names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _put_table(writer: ArtifactWriter, name: str, table: pa.Table) -> None:
    path = writer.local(name)
    pq.write_table(table, path)
    writer.add_file(name, path, rows=table.num_rows, schema={f.name: str(f.type) for f in table.schema})


def write_ingest_artifact(
    store: ArtifactStore,
    run_id: str,
    interactions: pd.DataFrame,
    items: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
    config_hash: str | None = None,
    source_file: str = "events.csv",
) -> str:
    """Commit `runs/{run_id}/ingest/` following the ingest contract; returns the artifact URI."""
    table = interactions_table(interactions, source_file)
    prefix = run_prefix(run_id, "ingest")
    with ArtifactWriter(store, prefix, step="ingest", run_id=run_id, config_hash=config_hash) as w:
        _put_table(w, "interactions.parquet", table)
        rows = {"interactions": table.num_rows}
        if items is not None:
            it = items_table(items)
            _put_table(w, "items.parquet", it)
            rows["items"] = it.num_rows
        if users is not None:
            ut = pa.Table.from_pandas(users.astype({"user_id": str}), preserve_index=False)
            _put_table(w, "users.parquet", ut)
            rows["users"] = ut.num_rows
        ts = table.column("timestamp").drop_null()
        w.summary.update(
            {
                "rows": rows,
                "min_timestamp": ts.to_pandas().min().isoformat() if len(ts) else None,
                "max_timestamp": ts.to_pandas().max().isoformat() if len(ts) else None,
                "sources": sorted(set(table.column("source_file").drop_null().to_pylist())),
            }
        )
    return store.uri(prefix)


def utc(*args: int) -> datetime:
    """datetime(*args) in UTC."""
    return datetime(*args, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- a tiny model


class CountsConfig(ModelConfig):
    type: Literal["test_counts"] = "test_counts"


@register(CountsConfig)
class CountsModel(Recommender):
    """Test-only recommender: items ranked by their weighted training count plus a seeded tie-breaking jitter."""

    def fit(
        self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None
    ) -> CountsModel:
        self._remember(train)
        rng = np.random.default_rng(self.config.seed)
        counts = np.bincount(train.item, weights=train.weight, minlength=train.n_items)
        self.counts = (counts + rng.random(train.n_items) * 0.01).astype(np.float32)
        return self

    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))

    def _state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.counts = arrays["counts"]


def fit_counts(seed: int, n_users: int = 6, n_items: int = 12, per_user: int = 5) -> CountsModel:
    """A `CountsModel` fitted on `per_user` random items for each user (the seed decides items and jitter)."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    train = Interactions.from_arrays(users, rng.integers(0, n_items, len(users)), n_users=n_users, n_items=n_items)
    return CountsModel(CountsConfig(seed=seed)).fit(train)


@contextlib.contextmanager
def restored_model_registry() -> Iterator[None]:
    """Model types registered inside the block are gone again after it."""
    # The built-ins load lazily; loaded inside the block, the restore would drop them for every later test.
    registry.available()
    saved = dict(registry._REGISTRY)
    try:
        yield
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)


def synthetic_pipeline(
    tmp_path: Path, name: str, data_sections: dict[str, Any], sections: dict[str, Any], **generate_args: Any
) -> PipelineConfig:
    """A config over freshly generated synthetic files (written under `tmp_path / "data"`), stored under
    `tmp_path / "store"`. `data_sections`: data.items / data.users entries, their `path` filled in."""
    from recloop import config
    from recloop.data.synth import generate

    paths = generate(**generate_args).write(tmp_path / "data")
    data: dict[str, Any] = {
        "interactions": {
            "path": str(paths["interactions"]),
            "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"},
            "timestamp_unit": "s",
        }
    }
    data.update({key: {"path": str(paths[key]), **entry} for key, entry in data_sections.items()})
    return config.from_dict({"name": name, "store": {"root": f"file://{tmp_path / 'store'}"}, "data": data, **sections})
