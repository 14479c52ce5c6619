"""Appending clean interactions to `feedback.output`, where the next ingest reads them.

One file per run, in the ingest input format (the columns named by `data.interactions.columns`, the
timestamp in `timestamp_unit`), so the next ingest picks them up when `data.interactions.path` covers that
folder (see docs/learning-loop.md). A retry of a run overwrites its own file; a run that took over a
crashed claim removes the crashed run's file.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recloop.artifacts import safe_run_id
from recloop.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from recloop.config import PipelineConfig
    from recloop.store import ArtifactStore


@dataclass
class Destination:
    """Where clean interactions are appended: the store, a local folder, or an s3:// folder."""

    uri: str
    write: Callable[[str, bytes], None]
    delete: Callable[[str], None]


def destination(cfg: PipelineConfig, store: ArtifactStore) -> Destination:
    out = cfg.feedback.output
    if out is None:
        prefix = "feedback/interactions"
        return Destination(
            store.uri(prefix),
            lambda name, data: store.put_bytes(f"{prefix}/{name}", data),
            lambda name: store.delete(f"{prefix}/{name}"),
        )
    if out.startswith("s3://"):
        from recloop.data.readers import s3_data_store

        s3_store, key = s3_data_store(out.rstrip("/") + "/", cfg.store)
        key = key.strip("/")

        def s3_key(name: str) -> str:
            return f"{key}/{name}" if key else name

        return Destination(
            out.rstrip("/"),
            lambda name, data: s3_store.put_bytes(s3_key(name), data),
            lambda name: s3_store.delete(s3_key(name)),
        )
    folder = Path(out[len("file://") :] if out.startswith("file://") else out)

    def write_local(name: str, data: bytes) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        except OSError as exc:
            raise DataError(
                f"feedback.output: cannot write to {folder} ({exc.strerror or exc}); fix the path or its permissions"
            ) from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)

    def delete_local(name: str) -> None:
        (folder / name).unlink(missing_ok=True)

    return Destination(str(folder), write_local, delete_local)


def output_format(cfg: PipelineConfig) -> str:
    """feedback.format, or (auto) the format the configured interactions are in."""
    if cfg.feedback.format != "auto":
        return cfg.feedback.format
    source = cfg.data.interactions
    if source.format != "auto":
        return "csv" if source.format == "tsv" else source.format
    from recloop.data.readers import infer_format, resolve_sources

    try:
        fmt, _ = infer_format(source.path, "auto", "data.interactions")
    except DataError:
        try:  # a folder or a glob: the format of the files already there
            fmt = resolve_sources(source.path, "auto", cfg.store, "data.interactions")[0].format
        except (DataError, IndexError):
            return "parquet"  # nothing to match: Parquet keeps types exactly
    return "csv" if fmt == "tsv" else fmt


def appended_name(run_id: str, fmt: str) -> str:
    return f"feedback-{safe_run_id(run_id)}.{fmt}"


def to_ingest_format(clean: pd.DataFrame, cfg: PipelineConfig, fmt: str) -> bytes:
    """Clean positive events as rows the configured ingest reads: mapped column names, timestamp unit."""
    import pandas as pd

    source = cfg.data.interactions
    cols = source.columns
    unit = source.timestamp_unit
    ts = clean["timestamp"]
    if unit == "iso":
        stamp: Any = ts.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
    else:
        ms = ts.astype("datetime64[ms, UTC]").astype("int64")
        stamp = {"s": ms // 1000, "ms": ms, "us": ms * 1000, "ns": ms * 1_000_000}[unit]
    out = pd.DataFrame(
        {cols.user: clean["user_id"].astype(str), cols.item: clean["item_id"].astype(str), cols.timestamp: stamp}
    )
    if cols.rating:
        rated = clean["event_type"].map(cfg.feedback.event_ratings).astype("float64")
        out[cols.rating] = clean["value"].where(clean["event_type"] == "rating", rated).astype("float64")
    if cols.event_type:
        out[cols.event_type] = clean["event_type"].astype(str)
    if cols.weight:
        out[cols.weight] = clean["reward"].astype("float64")
    for name in cols.context:
        out[name] = pd.Series([None] * len(out), dtype=object)
    buf = io.BytesIO()
    if fmt == "parquet":
        out.to_parquet(buf, index=False)
    elif fmt == "jsonl":
        out.to_json(buf, orient="records", lines=True)
    else:
        delimiter = source.delimiter or ("\t" if source.format == "tsv" else ",")
        buf.write(out.to_csv(index=False, sep=delimiter).encode(source.encoding))
    return buf.getvalue()


def picked_up(cfg: PipelineConfig, uri: str) -> bool:
    """Whether the next ingest's `data.interactions.path` includes the appended file."""
    from recloop.data.readers import resolve_sources

    try:
        files = resolve_sources(
            cfg.data.interactions.path, cfg.data.interactions.format, cfg.store, "data.interactions"
        )
    except DataError:
        return False
    return any(os.path.abspath(f.uri) == os.path.abspath(uri) if "://" not in uri else f.uri == uri for f in files)


@dataclass
class Appended:
    uri: str | None  # None: nothing to append
    format: str
    rows: int
    picked_up: bool | None  # whether the next ingest reads it (None: nothing appended)
    destination: str


def append_interactions(
    cfg: PipelineConfig, store: ArtifactStore, run_id: str, interactions: pd.DataFrame, took_over: str | None
) -> Appended:
    """Write this run's file (or remove a stale one when there is nothing to append)."""
    fmt = output_format(cfg)
    dest = destination(cfg, store)
    name = appended_name(run_id, fmt)
    if took_over:
        dest.delete(appended_name(took_over, fmt))
    uri = None
    if len(interactions):
        dest.write(name, to_ingest_format(interactions, cfg, fmt))
        uri = f"{dest.uri}/{name}"
    else:
        dest.delete(name)  # a retry that now finds nothing must not leave an earlier attempt's file
    return Appended(uri, fmt, len(interactions), picked_up(cfg, uri) if uri else None, dest.uri)
