"""Turn raw source chunks into recloop's ingest tables (the contract read by validate and preprocess).

Interactions keep every row: a value that cannot be parsed becomes null and the row gets an
`ingest_issue` saying why ("timestamp 'abc' is not a number"), so validation decides its fate and can
show it to a person. Parsing is vectorised (pyarrow casts, with a pandas fallback only for chunks that
hold bad values); messages are built only for the rows that have a problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recloop.data.readers import Chunk, as_strings

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from recloop.config import InteractionSource, ItemSource, UserSource

# Accepted event times: anything outside is almost surely a wrong `timestamp_unit`, not a real date.
MIN_TIMESTAMP_MS = -2208988800000  # 1900-01-01
MAX_TIMESTAMP_MS = 7258118400000  # 2200-01-01
_MS_PER_UNIT = {"s": 1000, "ms": 1, "us": 1e-3, "ns": 1e-6}
_INT_DIVISOR = {"us": 1000, "ns": 1_000_000}
RESERVED_ITEM_COLUMNS = ("item_id", "text", "categories")
_DATE_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def interactions_schema(context: list[str]) -> pa.Schema:
    import pyarrow as pa

    fields = [
        pa.field("user_id", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
        pa.field("rating", pa.float64()),
        pa.field("event_type", pa.string()),
        pa.field("weight", pa.float64()),
    ]
    fields += [pa.field(f"ctx_{name}", pa.string()) for name in context]
    fields += [
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("ingest_issue", pa.string()),
    ]
    return pa.schema(fields)


def interaction_columns(source: InteractionSource) -> dict[str, str]:
    """Config key -> source column, for every column the mapping needs."""
    cols = source.columns
    key = "data.interactions.columns"
    wanted = {f"{key}.user": cols.user, f"{key}.item": cols.item, f"{key}.timestamp": cols.timestamp}
    for name in ("rating", "event_type", "weight"):
        column = getattr(cols, name)
        if column is not None:
            wanted[f"{key}.{name}"] = column
    for i, column in enumerate(cols.context):
        wanted[f"{key}.context.{i}"] = column
    return wanted


class _Issues:
    """Per-row problems of one chunk; messages are formatted only for rows that have one."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parts: list[tuple[np.ndarray, Callable[[int], str]]] = []

    def add(self, mask: np.ndarray, message: Callable[[int], str]) -> None:
        if mask.any():
            self.parts.append((mask, message))

    def column(self, extra: dict[int, str] | None = None) -> pa.Array:
        import numpy as np
        import pyarrow as pa

        if not self.parts and not extra:
            return pa.nulls(self.n, pa.string())
        out = np.full(self.n, None, dtype=object)
        for mask, message in self.parts:
            for i in np.flatnonzero(mask).tolist():
                out[i] = message(i) if out[i] is None else f"{out[i]}; {message(i)}"
        for i, text in (extra or {}).items():
            out[i] = text
        return pa.array(out, pa.string())


def quoted(value: object, limit: int = 60) -> str:
    """A data value inside a message: repr'd (control characters escaped), cut to `limit` characters, so
    the message's own words (the fix) always fit."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 2] + "…" + text[-1]


def _clean_text(arr: pa.Array) -> pa.Array:
    """Strings trimmed of surrounding whitespace; empty -> null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pc.utf8_trim_whitespace(as_strings(arr))
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def _raw_values(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


# Spellings of "no value" that exporters (pandas, SQL dumps) write into id columns. Such an id would
# silently merge unrelated rows into one fake user or item, so it is treated as missing.
MISSING_ID_SPELLINGS = ("nan", "NaN", "NAN", "null", "NULL", "None", "none", "N/A", "n/a", "NA", "<NA>")


CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"


def _parse_id(arr: pa.Array, label: str, issues: _Issues) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    values = _clean_text(arr)
    placeholder = pc.fill_null(pc.is_in(values, value_set=pa.array(MISSING_ID_SPELLINGS)), False)
    raw = values.to_numpy(zero_copy_only=False)
    issues.add(
        placeholder.to_numpy(zero_copy_only=False),
        lambda i: f"{label} {quoted(raw[i])} is a missing-value placeholder, not an id",
    )
    # NUL and other control characters: invisible in logs and terminals, and no exporter means them.
    control = pc.fill_null(pc.match_substring_regex(values, CONTROL_CHARACTERS), False)
    issues.add(
        control.to_numpy(zero_copy_only=False),
        lambda i: f"{label} {quoted(raw[i])} contains control characters; fix the exporter or the file's encoding",
    )
    values = pc.if_else(pc.or_(placeholder, control), pa.scalar(None, pa.string()), values)
    issues.add(
        values.is_null().to_numpy(zero_copy_only=False)
        & ~placeholder.to_numpy(zero_copy_only=False)
        & ~control.to_numpy(zero_copy_only=False),
        lambda i: f"{label} is missing",
    )
    return values


def _parse_number(arr: pa.Array, label: str, issues: _Issues) -> pa.Array:
    """float64 values; non-numeric or non-finite entries become null with an issue."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type):
        raw = None
        parsed = pc.cast(arr, pa.float64())
    else:
        raw = _clean_text(arr)
        try:
            parsed = pc.cast(raw, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            coerced = pd.to_numeric(pd.Series(_raw_values(raw), dtype=object), errors="coerce")
            parsed = pa.array(coerced.to_numpy(dtype=np.float64), pa.float64(), from_pandas=True)
    values = parsed.to_numpy(zero_copy_only=False).astype(np.float64)
    present = ~(raw if raw is not None else arr).is_null().to_numpy(zero_copy_only=False)
    bad = present & ~np.isfinite(values)
    if not bad.any():
        return parsed
    shown = _raw_values(raw if raw is not None else as_strings(arr))

    def message(i: int) -> str:
        kind = (
            "not a number"
            if np.isnan(values[i]) and str(shown[i]).lower() not in ("nan", "+nan", "-nan")
            else "not a finite number"
        )
        return f"{label} {quoted(shown[i])} is {kind}"

    issues.add(bad, message)
    return pa.array(np.where(bad, np.nan, values), pa.float64(), mask=bad | ~present)


def _epoch_to_ms(arr: pa.Array, unit: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ms, parsed, finite-in-range) for epoch numbers in `unit`, typed or text."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        try:
            arr = pc.cast(arr, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            try:
                arr = pc.cast(arr, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                coerced = pd.to_numeric(pd.Series(_raw_values(arr), dtype=object), errors="coerce")
                arr = pa.array(coerced.to_numpy(dtype=np.float64), pa.float64(), from_pandas=True)
    parsed = ~arr.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_integer(arr.type):
        ints = pc.fill_null(pc.cast(arr, pa.int64()), 0).to_numpy()
        if unit in _INT_DIVISOR:
            ms = ints // _INT_DIVISOR[unit]
            ok = parsed & (ms >= MIN_TIMESTAMP_MS) & (ms <= MAX_TIMESTAMP_MS)
        else:
            factor = int(_MS_PER_UNIT[unit])
            ok = parsed & (ints >= MIN_TIMESTAMP_MS // factor) & (ints <= MAX_TIMESTAMP_MS // factor)
            ms = np.where(ok, ints, 0) * factor
        return ms, parsed, ok
    floats = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    parsed &= ~np.isnan(floats)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.where(parsed, floats, 0.0) * _MS_PER_UNIT[unit]
        ok = parsed & np.isfinite(scaled) & (scaled >= MIN_TIMESTAMP_MS) & (scaled <= MAX_TIMESTAMP_MS)
        ms = np.rint(np.where(ok, scaled, 0.0)).astype(np.int64)
    return ms, parsed, ok


def _iso_to_ms(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        # Typed Parquet times: naive ones are taken as UTC.
        ms_arr = pc.cast(pc.cast(arr, pa.timestamp("ms"), safe=False), pa.int64())
        parsed = ~ms_arr.is_null().to_numpy(zero_copy_only=False)
        ms = pc.fill_null(ms_arr, 0).to_numpy()
    else:
        series = pd.Series(_raw_values(arr), dtype=object)
        stamps = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce").dt.as_unit("ms")
        parsed = ~stamps.isna().to_numpy()
        # pandas-stubs lacks DatetimeArray.asi8 (the epoch integers; NaT's is replaced here).
        ms = np.where(parsed, stamps.array.asi8, 0)  # type: ignore[attr-defined]
    ok = parsed & (ms >= MIN_TIMESTAMP_MS) & (ms <= MAX_TIMESTAMP_MS)
    return ms, parsed, ok


def _parse_timestamp(arr: pa.Array, unit: str, issues: _Issues) -> pa.Array:
    import pyarrow as pa

    is_typed_time = pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type)
    raw = arr if is_typed_time or pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) else _clean_text(arr)
    present = ~raw.is_null().to_numpy(zero_copy_only=False)
    if unit == "iso" or is_typed_time:
        ms, parsed, ok = _iso_to_ms(raw if is_typed_time or pa.types.is_string(raw.type) else as_strings(raw))
    else:
        ms, parsed, ok = _epoch_to_ms(raw, unit)
    issues.add(~present, lambda i: "timestamp is missing")
    if (present & ~ok).any():
        shown = _raw_values(as_strings(raw))

        def message(i: int) -> str:
            value = shown[i]
            if not parsed[i]:
                if unit == "iso":
                    hint = (
                        " (set data.interactions.timestamp_unit to s/ms/us/ns for epoch numbers)"
                        if str(value).lstrip("-").isdigit()
                        else ""
                    )
                    return f"timestamp {quoted(value)} is not an ISO-8601 date-time{hint}"
                hint = (
                    " (set data.interactions.timestamp_unit to 'iso' for dates)" if _DATE_LIKE.match(str(value)) else ""
                )
                return f"timestamp {quoted(value)} is not a number{hint}"
            return (
                f"timestamp {quoted(value)} is out of range for timestamp_unit {unit!r} "
                "(outside 1900-2200: check data.interactions.timestamp_unit)"
            )

        issues.add(present & ~ok, message)
    return pa.array(ms, pa.int64(), mask=~ok).cast(pa.timestamp("ms", tz="UTC"))


def normalize_interactions(chunk: Chunk, source: InteractionSource, source_file: str, schema: pa.Schema) -> pa.Table:
    """One chunk of raw events -> rows of the interactions contract (broken rows included, as issues)."""
    import numpy as np
    import pyarrow as pa

    cols = source.columns
    table = chunk.table
    n = table.num_rows
    issues = _Issues(n)

    def column(name: str | None) -> pa.Array | None:
        return table.column(name).combine_chunks() if name is not None else None

    out: dict[str, pa.Array] = {
        "user_id": _parse_id(column(cols.user), "user id", issues),
        "item_id": _parse_id(column(cols.item), "item id", issues),
        "timestamp": _parse_timestamp(column(cols.timestamp), source.timestamp_unit, issues),
        "rating": _parse_number(column(cols.rating), "rating", issues) if cols.rating else pa.nulls(n, pa.float64()),
        "event_type": _clean_text(column(cols.event_type)) if cols.event_type else pa.nulls(n, pa.string()),
        "weight": _parse_number(column(cols.weight), "weight", issues) if cols.weight else pa.nulls(n, pa.float64()),
    }
    for name in cols.context:
        out[f"ctx_{name}"] = as_strings(column(name))
    out["source_file"] = pa.array(np.full(n, source_file, dtype=object), pa.string())
    out["source_row"] = pa.array(chunk.rows, pa.int64())
    out["ingest_issue"] = issues.column()
    result = pa.Table.from_arrays([out[f.name] for f in schema], schema=schema)
    if not chunk.broken:
        return result
    broken = pa.Table.from_arrays(
        [pa.nulls(len(chunk.broken), f.type) for f in list(schema)[:-3]]
        + [
            pa.array([source_file] * len(chunk.broken), pa.string()),
            pa.array([row for row, _ in chunk.broken], pa.int64()),
            pa.array([why for _, why in chunk.broken], pa.string()),
        ],
        schema=schema,
    )
    merged = pa.concat_tables([result, broken])
    return merged.take(np.argsort(merged.column("source_row").to_numpy(), kind="stable"))


# ---------------------------------------------------------------------------------------------- items


@dataclass(frozen=True)
class ItemLayout:
    """Which catalog columns feed the items table, decided once per run from the catalog header."""

    id_column: str
    category_column: str | None
    template: str
    extra_columns: tuple[tuple[str, str], ...]  # (source column, output column)

    @classmethod
    def from_columns(cls, source: ItemSource, columns: list[str]) -> ItemLayout:
        extra = []
        for column in columns:
            if column == source.id:
                continue
            extra.append((column, f"catalog_{column}" if column in RESERVED_ITEM_COLUMNS else column))
        return cls(source.id, source.category, source.text, tuple(extra))

    def schema(self) -> pa.Schema:
        import pyarrow as pa

        fields = [
            pa.field("item_id", pa.string()),
            pa.field("text", pa.string()),
            pa.field("categories", pa.list_(pa.string())),
        ]
        return pa.schema(fields + [pa.field(out, pa.string()) for _, out in self.extra_columns])


def split_categories(value: str | None) -> list[str]:
    """'Adventure|Animation | Children' -> ['Adventure', 'Animation', 'Children'].

    A JSON list (a list column from Parquet or JSON Lines arrives as its JSON text) is taken as is.
    """
    if not value:
        return []
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return [str(v).strip() for v in parsed if v is not None and str(v).strip()]
    return [part.strip() for part in value.split("|") if part.strip()]


def render_items(table: pa.Table, layout: ItemLayout, tags: dict[str, str] | None) -> tuple[pa.Table, int]:
    """Catalog rows -> items rows; returns (table, rows dropped for a missing id)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = _clean_text(table.column(layout.id_column).combine_chunks())
    keep = pc.is_valid(ids)
    dropped = table.num_rows - pc.sum(pc.cast(keep, pa.int64())).as_py() if table.num_rows else 0
    if dropped:
        table = table.filter(keep)
        ids = ids.filter(keep)
    strings = {c: as_strings(table.column(c).combine_chunks()).to_pylist() for c in table.column_names}
    id_list = ids.to_pylist()
    n = len(id_list)
    texts = np.empty(n, dtype=object)
    for i in range(n):
        row = {c: (values[i] or "") for c, values in strings.items()}
        if tags is not None:  # a configured tag source wins over a catalog column named 'tags'
            row["tags"] = tags.get(id_list[i], "")
        texts[i] = layout.template.format_map(row).strip()
    categories = [split_categories(v) for v in strings[layout.category_column]] if layout.category_column else [[]] * n
    arrays = [ids, pa.array(texts, pa.string()), pa.array(categories, pa.list_(pa.string()))]
    arrays += [pa.array(strings[src], pa.string()) for src, _ in layout.extra_columns]
    return pa.Table.from_arrays(arrays, schema=layout.schema()), int(dropped)


class TagFolder:
    """Counts (item, tag) pairs chunk by chunk; `folded()` gives each item's top tags as 'a, b, c'."""

    def __init__(self, max_tags: int) -> None:
        self.max_tags = max_tags
        self.counts: pd.Series | None = None

    def add(self, items: pa.Array, tags: pa.Array) -> None:
        import pandas as pd
        import pyarrow.compute as pc

        item_values = _clean_text(items)
        tag_values = pc.utf8_lower(_clean_text(tags))
        frame = pd.DataFrame({"item": _raw_values(item_values), "tag": _raw_values(tag_values)}).dropna()
        frame["tag"] = frame["tag"].str.replace(r"\s+", " ", regex=True)
        counts = frame.groupby(["item", "tag"], sort=False).size()
        self.counts = counts if self.counts is None else self.counts.add(counts, fill_value=0)

    def folded(self) -> dict[str, str]:
        if self.counts is None or self.counts.empty:
            return {}
        frame = self.counts.rename("n").reset_index()
        # Most frequent first; ties alphabetically, so the text is the same on every run.
        frame = frame.sort_values(["item", "n", "tag"], ascending=[True, False, True], kind="stable")
        top = frame.groupby("item", sort=False).head(self.max_tags)
        return {str(item): ", ".join(group["tag"]) for item, group in top.groupby("item", sort=False)}


# ---------------------------------------------------------------------------------------------- users


def user_schema(source: UserSource, columns: list[str]) -> pa.Schema:
    import pyarrow as pa

    extra = [c for c in columns if c != source.id and c != "user_id"]
    return pa.schema([pa.field("user_id", pa.string())] + [pa.field(c, pa.string()) for c in extra])


def render_users(table: pa.Table, source: UserSource, schema: pa.Schema) -> tuple[pa.Table, int]:
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = _clean_text(table.column(source.id).combine_chunks())
    keep = pc.is_valid(ids)
    dropped = table.num_rows - (pc.sum(pc.cast(keep, pa.int64())).as_py() or 0)
    if dropped:
        table, ids = table.filter(keep), ids.filter(keep)
    arrays = [ids] + [as_strings(table.column(f.name).combine_chunks()) for f in list(schema)[1:]]
    return pa.Table.from_arrays(arrays, schema=schema), int(dropped)
