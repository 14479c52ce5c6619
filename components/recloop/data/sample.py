"""Reading the first rows of a source, every column, for `recloop init` to infer a config from.

The files go through the same readers ingest uses (`recloop.data.readers`), so what `init` sees is what
ingest will read. A CSV's delimiter is taken from its header line (the most frequent of `,` tab `;` `|`).
Anything that stops a file from being read is a `UsageError` (exit 2) naming the flag that gave the path.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recloop.data.readers import SourceFile, infer_format, open_table, resolve_sources
from recloop.errors import DataError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa

    from recloop.config import StoreConfig

_DELIMITERS = (",", "\t", ";", "|")
_CHUNK_ROWS = 250_000


@dataclass(frozen=True)
class SourceSample:
    """Up to `max_rows` rows of one source (all its files, in order)."""

    flag: str  # the command-line flag that named the source, e.g. "--interactions"
    path: str  # as given on the command line
    table: pa.Table  # every column; csv/tsv/jsonl values as strings, Parquet values typed
    format: str  # csv | tsv | parquet | jsonl
    delimiter: str | None  # only when it is not the format's default
    n_files: int
    truncated: bool  # reading stopped at max_rows
    broken_rows: int  # rows that could not be split into fields


def read_sample(path: str, flag: str, config_key: str, max_rows: int, store: StoreConfig) -> SourceSample:
    """The first `max_rows` rows of the source `path` names; UsageError when it cannot be read or is empty."""
    files = _resolve(path, flag, config_key, store)
    tables: list[pa.Table] = []
    rows = broken = 0
    delimiter: str | None = None
    for src in files:
        if rows >= max_rows:
            break
        with src.local() as local:
            if src.size == 0 or local.stat().st_size == 0:
                raise UsageError(f"{flag} {path}: {src.uri} is empty; point {flag} at a file with a header and rows")
            delimiter = sniff_delimiter(local, src) if src.format in ("csv", "tsv") else None
            for table, n_broken in _read_file(src, local, delimiter, config_key, max_rows - rows, flag):
                tables.append(table)
                rows += table.num_rows
                broken += n_broken
    if rows == 0:
        raise UsageError(f"{flag} {path}: no data rows (only a header?); point {flag} at a file with rows")
    table = _concat(tables, flag, path)
    return SourceSample(flag, path, table, files[0].format, delimiter, len(files), rows >= max_rows, broken)


def _resolve(path: str, flag: str, config_key: str, store: StoreConfig) -> list[SourceFile]:
    local = path[len("file://") :] if path.startswith("file://") else path
    is_local = "://" not in local
    if is_local and not any(c in local for c in "*?[") and not os.path.exists(local):
        raise UsageError(f"{flag} {path}: no such file or directory; check the path")
    if is_local and os.path.isfile(local):
        try:
            infer_format(local, "auto", config_key)
        except DataError:
            raise UsageError(
                f"{flag} {path}: cannot tell the file format from its name; rename it to end in .csv, .tsv, "
                ".parquet or .jsonl (optionally followed by .gz)"
            ) from None
    try:
        return resolve_sources(path, "auto", store, config_key)
    except DataError as exc:
        raise UsageError(f"{flag} {path}: {exc}") from None


def _read_file(
    src: SourceFile, local: Path, delimiter: str | None, config_key: str, max_rows: int, flag: str
) -> list[tuple[pa.Table, int]]:
    out: list[tuple[pa.Table, int]] = []
    try:
        reader = open_table(
            src, local, chunk_rows=min(max_rows, _CHUNK_ROWS), config_key=config_key, delimiter=delimiter
        )
        try:
            for chunk in reader.chunks(list(reader.columns)):
                table = chunk.table.slice(0, max_rows)
                out.append((table, len(chunk.broken)))
                max_rows -= table.num_rows
                if max_rows <= 0:
                    break
        finally:
            reader.close()
    except DataError as exc:
        message = str(exc)
        if "empty" in message:
            raise UsageError(
                f"{flag} {src.uri}: the file is empty; point {flag} at a file with a header and rows"
            ) from None
        raise UsageError(f"{flag}: {message}") from None
    return out


def _concat(tables: list[pa.Table], flag: str, path: str) -> pa.Table:
    import pyarrow as pa

    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise UsageError(
            f"{flag} {path}: its files do not share one set of columns ({exc}); name one file or a "
            "glob of files with the same columns"
        ) from None


def sniff_delimiter(local: Path, src: SourceFile) -> str | None:
    """The header line's delimiter when it is not the format's default (`,` for csv, tab for tsv)."""
    opener = gzip.open if src.gzip else open
    try:
        with opener(local, "rb") as handle:
            line = handle.readline(1 << 20)
    except (OSError, EOFError):
        return None  # the reader reports the problem with its own message
    header = line.decode("utf-8", errors="replace")
    default = "\t" if src.format == "tsv" else ","
    counts = {d: header.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return None if counts[best] == 0 or counts[default] >= counts[best] else best
