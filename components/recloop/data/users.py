"""The users module: typed user attributes from the user table, checked once and written for the models.

`check_attributes(raw, source)` is what validate reports: per configured attribute, the users whose value
is invalid (not a number, outside `range`, not in `allowed`) and the share with no valid value against
`max_missing`. `user_side_frame(raw, user_ids, source)` is what preprocess writes (`users.parquet` of the
preprocess artifact): one row per contiguous user id, each attribute typed (categorical: string, numeric:
float64, multi: list of strings, text: string; invalid or missing values null) and the rendered `profile`.

User attributes are a snapshot of the user table at ingest, not events: they carry no time, so the time
split has nothing to cut; what a model learns from them is fit on the training split only like everything
else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from recloop.config.data import UserAttribute, UserSource


@dataclass
class AttributeCheck:
    """What validate says about one attribute."""

    name: str
    users: int
    invalid: int  # present but not a valid value
    missing_share: float  # no valid value (missing or invalid), of the table's users
    examples: list[str]
    max_missing: float

    @property
    def ok(self) -> bool:
        return self.missing_share <= self.max_missing

    def describe(self) -> str:
        shown = ", ".join(repr(e) for e in self.examples)
        invalid = f"{self.invalid} invalid value(s) (e.g. {shown}); " if self.invalid else ""
        return (
            f"data.users.attributes.{self.name}: {invalid}{self.missing_share:.1%} of {self.users} users have no "
            f"valid value (max_missing {self.max_missing:.0%})"
        )


def check_attributes(raw: pd.DataFrame, source: UserSource) -> list[AttributeCheck]:
    """One check per configured attribute of the raw (string) user table."""
    checks = []
    for name, spec in source.attributes.items():
        if name not in raw.columns:
            checks.append(AttributeCheck(name, len(raw), 0, 1.0, [], spec.max_missing))
            continue
        present = raw[name].notna() & (raw[name].astype("string").str.strip() != "")
        typed = _typed(raw[name], spec)
        valid = typed.notna()
        bad = present & ~valid
        examples = raw.loc[bad, name].astype(str).head(3).tolist()
        missing = 1.0 - float(valid.mean()) if len(raw) else 0.0
        checks.append(AttributeCheck(name, len(raw), int(bad.sum()), round(missing, 6), examples, spec.max_missing))
    return checks


def user_side_frame(raw: pd.DataFrame | None, user_ids: list[str], source: UserSource) -> pd.DataFrame:
    """user_idx, every configured attribute typed, and `profile`, for each contiguous user id."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"user_idx": np.arange(len(user_ids), dtype=np.int32), "user_id": user_ids})
    table = raw.drop_duplicates("user_id").set_index("user_id") if raw is not None else pd.DataFrame()
    for name, spec in source.attributes.items():
        column = table[name] if name in table.columns else pd.Series(dtype="string")
        frame[name] = _typed(column.reindex(frame["user_id"]).reset_index(drop=True), spec)
    if source.profile is not None:
        frame["profile"] = [_render(source.profile, row) for row in frame.to_dict("records")]
    return frame.drop(columns=["user_id"])


def _typed(values: pd.Series, spec: UserAttribute) -> pd.Series:
    """The attribute's values in its type; invalid or missing ones null."""
    import pandas as pd

    text = values.astype("string").str.strip()
    text = text.where(text != "")
    if spec.type == "numeric":
        numbers = pd.to_numeric(text, errors="coerce").astype("float64")
        if spec.range is not None:
            numbers = numbers.where(numbers.between(*spec.range))
        return numbers
    if spec.type == "multi":
        allowed = None if spec.allowed is None else set(spec.allowed)

        def split(cell: Any) -> Any:
            if cell is pd.NA or cell is None:
                return None
            parts = [p.strip() for p in str(cell).split(spec.separator) if p.strip()]
            if not parts or (allowed is not None and not set(parts) <= allowed):
                return None
            return parts

        return pd.Series([split(c) for c in text], index=values.index, dtype="object")
    if spec.type == "categorical" and spec.allowed is not None:
        return text.where(text.isin(spec.allowed))
    return text


def _render(template: str, row: dict[Any, Any]) -> str:
    import pandas as pd

    def shown(value: Any) -> str:
        if value is None or (not isinstance(value, list) and pd.isna(value)):
            return ""
        return ", ".join(value) if isinstance(value, list) else str(value)

    return template.format_map({str(k): shown(v) for k, v in row.items()}).strip()
