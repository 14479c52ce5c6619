"""ingest: raw events, item catalog and users -> `interactions.parquet`, `items.parquet`, `users.parquet`.

Every source is streamed in chunks of `data.chunk_rows` rows and appended to a Parquet file with a
`ParquetWriter`, so memory stays bounded whatever the input size. Interaction rows whose values cannot
be parsed are kept with nulls and an `ingest_issue` (validate decides their fate); structural problems
raise `DataError` before anything is committed. With a `since` watermark only events strictly after it
are kept; the manifest's `max_timestamp` is the watermark for the next incremental run (it is null when
no event was newer, so the caller keeps the previous one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from recloop.artifacts.kinds import RawEvents
from recloop.config import template_fields
from recloop.data.normalize import (
    ItemLayout,
    TagFolder,
    interaction_columns,
    interactions_schema,
    normalize_interactions,
    render_items,
    render_users,
    user_schema,
)
from recloop.data.readers import SourceFile, TableReader, open_table, position, resolve_sources
from recloop.errors import ConfigError, DataError
from recloop.steps.base import StepContext

if TYPE_CHECKING:
    import pyarrow as pa

    from recloop.artifacts import ArtifactWriter, Manifest
    from recloop.config import DataConfig, ItemSource


@dataclass
class _Sources:
    interactions: list[SourceFile]
    items: list[SourceFile] = field(default_factory=list)
    tags: list[SourceFile] = field(default_factory=list)
    users: list[SourceFile] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        out = {"interactions": [s.uri for s in self.interactions]}
        for name in ("items", "tags", "users"):
            files = getattr(self, name)
            if files:
                out[name] = [s.uri for s in files]
        return out


def _as_utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def _schema_dict(schema: pa.Schema) -> dict[str, str]:
    return {f.name: str(f.type) for f in schema}


def _resolve(ctx: StepContext) -> _Sources:
    data, store = ctx.config.data, ctx.config.store
    sources = _Sources(resolve_sources(data.interactions.path, data.interactions.format, store, "data.interactions"))
    if data.items is not None:
        sources.items = resolve_sources(data.items.path, data.items.format, store, "data.items")
        if data.items.tags is not None:
            tags = data.items.tags
            sources.tags = resolve_sources(tags.path, tags.format, store, "data.items.tags")
    if data.users is not None:
        sources.users = resolve_sources(data.users.path, data.users.format, store, "data.users")
    return sources


def _check_template(ctx: StepContext, items: ItemSource, columns: list[str], uri: str) -> None:
    """Every `{field}` of data.items.text must be a catalog column (or `tags` with a tag source)."""
    available = set(columns) | ({"tags"} if items.tags is not None else set())
    missing = [f for f in template_fields(items.text) if f not in available]
    if not missing:
        return
    found = ", ".join(repr(c) for c in columns) or "none"
    names = ", ".join("{" + f + "}" for f in missing)
    tag_hint = "" if items.tags is not None else "; {tags} needs a tag source in data.items.tags"
    raise ConfigError(
        ctx.config.source,
        [
            f"data.items.text: the template uses {names} but the catalog {uri} has no such column "
            f"(columns found: {found}{tag_hint}); use the columns found or fix the catalog"
        ],
    )


def _item_requirements(items: ItemSource) -> dict[str, str]:
    wanted = {"data.items.id": items.id}
    if items.category is not None:
        wanted["data.items.category"] = items.category
    return wanted


def _precheck(ctx: StepContext, sources: _Sources) -> None:
    """Fail in seconds on a wrong mapping or template: check the first local file of each source.

    S3 sources are checked as they are read (before anything is committed), to avoid a second download.
    """
    data = ctx.config.data

    def check(
        files: list[SourceFile], key: str, delimiter: str | None, encoding: str, verify: Callable[[TableReader], None]
    ) -> None:
        if not files or files[0].s3_store is not None:
            return
        src = files[0]
        with src.local() as path:
            reader = open_table(
                src, path, chunk_rows=data.chunk_rows, config_key=key, delimiter=delimiter, encoding=encoding
            )
            try:
                verify(reader)
            finally:
                reader.close()

    if data.items is not None:
        items = data.items

        def verify_catalog(r: TableReader) -> None:
            _check_template(ctx, items, r.columns, r.src.uri)
            r.require(_item_requirements(items))

        check(
            sources.items,
            "data.items",
            items.delimiter,
            items.encoding,
            verify_catalog,
        )
        if items.tags is not None:
            tags = items.tags
            check(
                sources.tags,
                "data.items.tags",
                tags.delimiter,
                tags.encoding,
                lambda r: r.require({"data.items.tags.item": tags.item, "data.items.tags.tag": tags.tag}),
            )
    if data.users is not None:
        users = data.users
        check(
            sources.users,
            "data.users",
            users.delimiter,
            users.encoding,
            lambda r: r.require({"data.users.id": users.id}),
        )
    inter = data.interactions
    check(
        sources.interactions,
        "data.interactions",
        inter.delimiter,
        inter.encoding,
        lambda r: r.require(interaction_columns(inter)),
    )


class _Reading:
    """Iterate the files of one source with byte-based progress."""

    def __init__(
        self,
        ctx: StepContext,
        files: list[SourceFile],
        description: str,
        key: str,
        delimiter: str | None,
        encoding: str,
    ) -> None:
        self.ctx, self.files, self.key = ctx, files, key
        self.delimiter, self.encoding = delimiter, encoding
        self.advance = ctx.progress(description, float(sum(f.size for f in files)) or None, unit="bytes")

    def each(self) -> Iterator[TableReader]:
        chunk_rows = self.ctx.config.data.chunk_rows
        for src in self.files:
            with src.local() as path:
                reader = open_table(
                    src,
                    path,
                    chunk_rows=chunk_rows,
                    config_key=self.key,
                    delimiter=self.delimiter,
                    encoding=self.encoding,
                )
                try:
                    yield reader
                finally:
                    reader.close()

    def progress(self, reader: TableReader, already: list[int]) -> None:
        """Advance the bar by what `reader` consumed since the last call (`already` holds that count)."""
        delta = reader.bytes_read - already[0]
        if delta > 0:
            self.advance(float(delta))
            already[0] = reader.bytes_read


def _require_same_header(reader: TableReader, columns: list[str], first: SourceFile, key: str) -> None:
    missing = [c for c in columns if c not in reader.columns]
    if missing:
        raise DataError(
            f"{reader.src.uri}: lacks column(s) {', '.join(map(repr, missing))} that the first file "
            f"{first.uri} has; all files matched by {key}.path must share one header"
        )


def _fold_tags(ctx: StepContext, items: ItemSource, files: list[SourceFile]) -> dict[str, str] | None:
    if items.tags is None:
        return None
    tags = items.tags
    folder = TagFolder(tags.max_tags)
    reading = _Reading(ctx, files, "ingest tags", "data.items.tags", tags.delimiter, tags.encoding)
    for reader in reading.each():
        reader.require({"data.items.tags.item": tags.item, "data.items.tags.tag": tags.tag})
        consumed = [0]
        for chunk in reader.chunks([tags.item, tags.tag]):
            folder.add(chunk.table.column(tags.item).combine_chunks(), chunk.table.column(tags.tag).combine_chunks())
            reading.progress(reader, consumed)
    return folder.folded()


def _first_occurrences(ids: list[Any], seen: set[Any]) -> list[bool]:
    """Per id: True where it is in neither `seen` nor earlier in `ids`; adds every id to `seen`."""
    fresh = []
    for i in ids:
        fresh.append(i not in seen)
        seen.add(i)
    return fresh


def _ingest_items(ctx: StepContext, writer: ArtifactWriter, sources: _Sources) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = ctx.config.data.items
    assert items is not None
    tags = _fold_tags(ctx, items, sources.tags)
    reading = _Reading(ctx, sources.items, "ingest items", "data.items", items.delimiter, items.encoding)
    layout: ItemLayout | None = None
    out_writer: pq.ParquetWriter | None = None
    seen: set[str] = set()
    stats = {"rows": 0, "missing_id": 0, "duplicate_id": 0, "broken_rows": 0}
    path = writer.local(RawEvents.ITEMS)
    try:
        for reader in reading.each():
            _check_template(ctx, items, reader.columns, reader.src.uri)
            reader.require(_item_requirements(items))
            if layout is None:
                layout = ItemLayout.from_columns(items, reader.columns)
                out_writer = pq.ParquetWriter(path, layout.schema())
            _require_same_header(reader, [src for src, _ in layout.extra_columns], sources.items[0], "data.items")
            consumed = [0]
            wanted = [layout.id_column] + [src for src, _ in layout.extra_columns]
            for chunk in reader.chunks(wanted):
                stats["broken_rows"] += len(chunk.broken)
                for row, why in chunk.broken[:3]:
                    ctx.log(f"ingest: skipped catalog {position(reader.src.uri, row)}: {why}")
                table, dropped = render_items(chunk.table, layout, tags)
                stats["missing_id"] += dropped
                ids = table.column("item_id").to_pylist()
                fresh = _first_occurrences(ids, seen)  # first occurrence wins
                if not all(fresh):
                    stats["duplicate_id"] += fresh.count(False)
                    table = table.filter(pa.array(fresh))
                stats["rows"] += table.num_rows
                assert out_writer is not None
                out_writer.write_table(table)
                reading.progress(reader, consumed)
    finally:
        if out_writer is not None:
            out_writer.close()
    assert layout is not None
    if stats["duplicate_id"] or stats["missing_id"] or stats["broken_rows"]:
        ctx.log(
            f"ingest: catalog: dropped {stats['duplicate_id']} duplicate id(s) (first kept), "
            f"{stats['missing_id']} row(s) without an id, {stats['broken_rows']} unreadable row(s)"
        )
    writer.add_file(RawEvents.ITEMS, path, rows=stats["rows"], schema=_schema_dict(layout.schema()))
    return stats


def _ingest_users(ctx: StepContext, writer: ArtifactWriter, sources: _Sources) -> dict[str, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    users = ctx.config.data.users
    assert users is not None
    reading = _Reading(ctx, sources.users, "ingest users", "data.users", users.delimiter, users.encoding)
    schema: pa.Schema | None = None
    out_writer: pq.ParquetWriter | None = None
    seen: set[str] = set()
    stats = {"rows": 0, "missing_id": 0, "duplicate_id": 0, "broken_rows": 0}
    path = writer.local(RawEvents.USERS)
    try:
        for reader in reading.each():
            reader.require({"data.users.id": users.id})
            if schema is None:
                schema = user_schema(users, reader.columns)
                out_writer = pq.ParquetWriter(path, schema)
            consumed = [0]
            wanted = [users.id] + [f.name for f in list(schema)[1:]]
            _require_same_header(reader, wanted, sources.users[0], "data.users")
            for chunk in reader.chunks(wanted):
                stats["broken_rows"] += len(chunk.broken)
                table, dropped = render_users(chunk.table, users, schema)
                stats["missing_id"] += dropped
                ids = table.column("user_id").to_pylist()
                fresh = _first_occurrences(ids, seen)
                if not all(fresh):
                    stats["duplicate_id"] += fresh.count(False)
                    table = table.filter(pa.array(fresh))
                stats["rows"] += table.num_rows
                assert out_writer is not None
                out_writer.write_table(table)
                reading.progress(reader, consumed)
    finally:
        if out_writer is not None:
            out_writer.close()
    assert schema is not None
    writer.add_file(RawEvents.USERS, path, rows=stats["rows"], schema=_schema_dict(schema))
    return stats


class _InteractionStats(TypedDict):
    """Row counts of the ingested interactions, and their time range (epoch ms; None when no row has a time)."""

    rows: int
    read_rows: int
    issue_rows: int
    before_since: int
    min_ms: int | None
    max_ms: int | None


def _ingest_interactions(
    ctx: StepContext, writer: ArtifactWriter, sources: _Sources, since: datetime | None
) -> _InteractionStats:
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    inter = ctx.config.data.interactions
    schema = interactions_schema(inter.columns.context)
    wanted = interaction_columns(inter)
    columns = list(dict.fromkeys(wanted.values()))
    since_us = int(since.timestamp() * 1_000_000) if since is not None else None
    reading = _Reading(
        ctx, sources.interactions, "ingest interactions", "data.interactions", inter.delimiter, inter.encoding
    )
    stats: _InteractionStats = {
        "rows": 0,
        "read_rows": 0,
        "issue_rows": 0,
        "before_since": 0,
        "min_ms": None,
        "max_ms": None,
    }
    min_ms: int | None = None
    max_ms: int | None = None
    path = writer.local(RawEvents.INTERACTIONS)
    with pq.ParquetWriter(path, schema) as out:
        for reader in reading.each():
            reader.require(wanted)
            consumed = [0]
            file_rows = 0
            for chunk in reader.chunks(columns):
                table = normalize_interactions(chunk, inter, reader.src.uri, schema)
                file_rows += table.num_rows
                if since_us is not None:
                    ts_ms = table.column("timestamp").combine_chunks().cast("int64")
                    unknown = ts_ms.is_null().to_numpy(zero_copy_only=False)
                    # Rows without a readable time are kept: validation reports them instead of them vanishing.
                    newer = unknown | (pc.fill_null(ts_ms, 0).to_numpy() * 1000 > since_us)
                    stats["before_since"] += int((~newer).sum())
                    if not newer.all():
                        table = table.filter(newer)
                if table.num_rows:
                    bounds = pc.min_max(table.column("timestamp")).as_py()
                    if bounds["min"] is not None:
                        lo = int(bounds["min"].timestamp() * 1000)
                        hi = int(bounds["max"].timestamp() * 1000)
                        min_ms = lo if min_ms is None else min(min_ms, lo)
                        max_ms = hi if max_ms is None else max(max_ms, hi)
                    stats["issue_rows"] += int(np.sum(table.column("ingest_issue").is_valid()))
                    out.write_table(table)
                stats["rows"] += table.num_rows
                reading.progress(reader, consumed)
            if file_rows == 0:
                raise DataError(
                    f"{reader.src.uri}: no rows (the file has a header but no data); "
                    "remove the file or point data.interactions.path at the data"
                )
            stats["read_rows"] += file_rows
    writer.add_file(RawEvents.INTERACTIONS, path, rows=stats["rows"], schema=_schema_dict(schema))
    stats["min_ms"], stats["max_ms"] = min_ms, max_ms
    return stats


def run(ctx: StepContext, inputs: dict[str, str], output: str) -> Manifest:
    data: DataConfig = ctx.config.data
    since = _as_utc(ctx.params.since or data.since)
    sources = _resolve(ctx)
    _precheck(ctx, sources)
    with ctx.writer(output) as writer:
        rows: dict[str, int] = {}
        dropped: dict[str, dict[str, int]] = {}
        if data.items is not None:
            item_stats = _ingest_items(ctx, writer, sources)
            rows["items"] = item_stats.pop("rows")
            dropped["items"] = item_stats
        if data.users is not None:
            user_stats = _ingest_users(ctx, writer, sources)
            rows["users"] = user_stats.pop("rows")
            dropped["users"] = user_stats
        inter = _ingest_interactions(ctx, writer, sources, since)
        rows["interactions"] = inter["rows"]
        writer.summary.update(
            {
                "rows": rows,
                "min_timestamp": _iso_ms(inter["min_ms"]),
                "max_timestamp": _iso_ms(inter["max_ms"]),
                "since": since.isoformat() if since is not None else None,
                "read_rows": inter["read_rows"],
                "skipped_before_since": inter["before_since"],
                "issue_rows": inter["issue_rows"],
                "dropped": dropped,
                "sources": sources.as_dict(),
            }
        )
    ctx.log(
        f"ingest: {rows['interactions']} interactions"
        + (f" ({inter['before_since']} at or before {since.isoformat()} skipped)" if since else "")
        + (f", {inter['issue_rows']} with issues" if inter["issue_rows"] else "")
        + "".join(f", {rows[k]} {k}" for k in ("items", "users") if k in rows)
        + f" -> {writer.manifest.uri}"
    )
    return writer.manifest
