"""What one column's values look like: its kind (integer, number, datetime, text), range, distinct count,
and whether its text values are lists (`Action|Comedy`). Role inference reads these facts, never raw data.

A text column is numeric (or a date) when at least `PARSE_SHARE` of its first `TYPE_PROBE` values parse
that way, so a few bad values do not hide what a column is (ingest reports them per row later).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from recloop.data.readers import as_strings

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

ColumnKind = Literal["integer", "number", "datetime", "text", "empty"]

PARSE_SHARE = 0.99
TYPE_PROBE = 100_000
_DATE_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}")
# A text column is a list when this share of values hold the separator and its parts repeat across rows.
_LIST_SHARE = 0.2
_LIST_SEPARATORS = ("|", ";", ",")
_LIST_MAX_PART_CHARS = 30


@dataclass(frozen=True)
class ColumnFacts:
    """One column's values, summarised."""

    name: str
    kind: ColumnKind
    n_values: int  # non-null values
    n_distinct: int
    low: float | None  # integer/number: smallest value; datetime: earliest, as epoch milliseconds
    high: float | None
    typed_time: bool  # a typed timestamp/date column (Parquet), not text
    mean_chars: float  # mean length of the values as text
    list_separator: str | None  # '|', ';', ',' or 'json' when the values are lists
    examples: tuple[str, ...]  # the most frequent values, most frequent first (up to 5)

    @property
    def unique(self) -> bool:
        return self.n_values > 0 and self.n_distinct == self.n_values

    def describe(self) -> str:
        """'integers 1..671', 'ISO dates 2024-01-01..2024-12-31', "text, 20 distinct values ('a', 'b', …)"."""
        if self.kind == "empty":
            return "no values"
        if self.kind == "datetime":
            first, last = (_date_text(v) for v in (self.low, self.high))
            return f"{'timestamps' if self.typed_time else 'ISO dates'} {first}..{last}"
        if self.kind in ("integer", "number"):
            noun = "integers" if self.kind == "integer" else "numbers"
            return f"{noun} {_number_text(self.low)}..{_number_text(self.high)}"
        shown = ", ".join(repr(v) for v in self.examples[:3])
        more = ", …" if self.n_distinct > 3 else ""
        lists = f"{_separator_text(self.list_separator)} lists, " if self.list_separator else ""
        return f"text, {lists}{self.n_distinct:,} distinct values ({shown}{more})"

    def short(self) -> str:
        """'text, 5 values', 'ISO dates', 'integers'."""
        if self.kind == "text":
            return f"text, {self.n_distinct:,} values"
        return {"datetime": "dates", "integer": "integers", "number": "numbers"}.get(self.kind, "no values")


def describe_table(table: pa.Table) -> list[ColumnFacts]:
    """Facts of every column, in file order."""
    return [describe_column(name, table.column(name)) for name in table.column_names]


def describe_column(name: str, column: pa.ChunkedArray | pa.Array) -> ColumnFacts:
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    text = _text_values(arr)
    if text.empty:
        return ColumnFacts(name, "empty", 0, 0, None, None, False, 0.0, None, ())

    def facts(kind: ColumnKind, low: float | None, high: float | None, separator: str | None = None) -> ColumnFacts:
        counts = text.value_counts()
        typed_time = kind == "datetime" and (pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type))
        examples = tuple(str(v) for v in counts.index[:5])
        mean_chars = float(text.str.len().mean())
        return ColumnFacts(name, kind, len(text), len(counts), low, high, typed_time, mean_chars, separator, examples)

    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        return facts("datetime", *_time_range_ms(arr))
    numbers = _numbers(arr, text)
    if numbers is not None:
        integral = bool((numbers == numbers.round()).all())
        return facts("integer" if integral else "number", float(numbers.min()), float(numbers.max()))
    dates = _iso_dates_ms(text)
    if dates is not None:
        return facts("datetime", float(dates.min()), float(dates.max()))
    return facts("text", None, None, list_separator(text))


def _text_values(arr: pa.Array) -> pd.Series:
    """Non-null values as trimmed strings; empty strings count as missing."""
    import pandas as pd

    values = pd.Series(as_strings(arr).to_numpy(zero_copy_only=False), dtype=object).dropna().astype(str).str.strip()
    return values[values != ""].reset_index(drop=True)


def _numbers(arr: pa.Array, text: pd.Series) -> pd.Series | None:
    """The values as floats when the column is numeric (typed, or text that nearly all parses)."""
    import pandas as pd
    import pyarrow as pa

    if pa.types.is_boolean(arr.type):
        return None
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_decimal(arr.type):
        return pd.Series(arr.to_numpy(zero_copy_only=False), dtype="float64").dropna()
    probe = pd.to_numeric(text.iloc[:TYPE_PROBE], errors="coerce")
    if probe.notna().mean() < PARSE_SHARE:
        return None
    return pd.to_numeric(text, errors="coerce").dropna().astype("float64")


def _iso_dates_ms(text: pd.Series) -> pd.Series | None:
    """Epoch milliseconds when nearly every value is an ISO-8601 date or date-time."""
    import pandas as pd

    probe = text.iloc[:TYPE_PROBE]
    if probe.str.match(_DATE_LIKE).mean() < PARSE_SHARE:
        return None
    stamps = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    if stamps.notna().mean() < PARSE_SHARE:
        return None
    return stamps.dropna().dt.as_unit("ms").astype("int64")


def _time_range_ms(arr: pa.Array) -> tuple[float, float]:
    import pyarrow as pa
    import pyarrow.compute as pc

    ms = pc.cast(pc.cast(arr, pa.timestamp("ms"), safe=False), pa.int64())
    bounds = pc.min_max(ms)
    return float(bounds["min"].as_py()), float(bounds["max"].as_py())


def list_separator(text: pd.Series) -> str | None:
    """'|', ';', ',' or 'json' when the values are lists whose parts repeat across rows (genres, tags)."""
    probe = text.iloc[:TYPE_PROBE]
    if probe.str.startswith("[").mean() >= PARSE_SHARE and probe.str.endswith("]").mean() >= PARSE_SHARE:
        return "json"
    for sep in _LIST_SEPARATORS:
        holding = probe[probe.str.contains(sep, regex=False)]
        if len(holding) < max(2, _LIST_SHARE * len(probe)):
            continue
        parts = holding.str.split(sep, regex=False).explode().str.strip()
        parts = parts[parts != ""]
        # Lists reuse a small vocabulary of short parts; prose split at commas does not.
        if len(parts) and parts.str.len().mean() <= _LIST_MAX_PART_CHARS and parts.nunique() <= 0.2 * len(parts):
            return sep
    return None


def _number_text(value: float | None) -> str:
    if value is None:
        return "?"
    if abs(value) >= 1e6:
        return f"{value:.2e}".replace("e+0", "e").replace("e+", "e")
    return f"{value:g}"


def _date_text(ms: float | None) -> str:
    if ms is None:
        return "?"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date().isoformat()


def _separator_text(sep: str | None) -> str:
    return "JSON" if sep == "json" else f"'{sep}'-separated"


def epoch_date_text(seconds: float) -> str:
    """A Unix time in seconds as an ISO date (for explanations)."""
    return _date_text(seconds * 1000)
