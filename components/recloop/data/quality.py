"""Data-quality checks on ingested interactions: a great-expectations 1.x suite plus recommender checks.

`check_interactions` is the whole evaluation, independent of the artifact store: it takes the ingest
frames, builds the expectation suites from `ValidationConfig`, runs them with an ephemeral GX context
(optionally rendering Data Docs) and adds checks GX has no expectation for (users/items below the
minimum counts, cold-start share of the catalog). The result is a `QualityReport`.

Row-level rules (null ids, unparsed rows, out-of-range ratings, unknown event types, future timestamps,
repeated events, items missing from the catalog) are also computed as pandas masks, because GX only
returns a sample of offending rows cheaply; the masks decide quarantine and give the sample rows (with
`source_file` / `source_row`) shown to users. GX and the masks implement the same predicate per rule and
tests pin both to the same counts.

great_expectations is imported inside `run_great_expectations` only: importing it takes seconds.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from recloop.data.readers import position

if TYPE_CHECKING:
    from recloop.config import ValidationConfig

# Contract columns of ingest's interactions.parquet and the GX `type_` each must have. "Timestamp" is
# pandas' scalar type of a timezone-aware datetime column; "str" accepts pandas' string dtypes and
# object columns holding only strings.
INTERACTION_TYPES: dict[str, str] = {
    "user_id": "str",
    "item_id": "str",
    "timestamp": "Timestamp",
    "rating": "float64",
    "event_type": "str",
    "weight": "float64",
    "source_file": "str",
    "source_row": "int64",
    "ingest_issue": "str",
}
_TYPE_WORDS = {
    "str": "a string",
    "Timestamp": "a timezone-aware timestamp",
    "float64": "a float64",
    "int64": "an int64",
}
KEY_COLUMNS = ("user_id", "item_id", "timestamp")
# Derived columns added to the frame GX validates, so that rate checks are plain column expectations.
DUPLICATE_OF = "duplicate_of"
IN_CATALOG = "item_in_catalog"
SAMPLE_ROWS = 5

CheckSource = Literal["great_expectations", "recloop"]


@dataclass
class CheckResult:
    """One expectation or recommender check, as written to result.json."""

    name: str
    description: str
    source: CheckSource
    success: bool
    blocking: bool = True  # a failure fails validation (False: reported only)
    row_level: bool = False  # failing rows can be quarantined one by one
    expectation_type: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    observed_value: Any = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    sample_rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _json_safe(
            {
                "name": self.name,
                "description": self.description,
                "source": self.source,
                "expectation_type": self.expectation_type,
                "kwargs": self.kwargs,
                "success": self.success,
                "blocking": self.blocking,
                "row_level": self.row_level,
                "observed_value": self.observed_value,
                "unexpected_count": self.unexpected_count,
                "unexpected_percent": self.unexpected_percent,
                "sample_rows": self.sample_rows,
                "error": self.error,
            }
        )


@dataclass
class RowRule:
    """A row-level rule: which rows break it and, for those rows, why (one string per bad row)."""

    name: str
    bad: np.ndarray  # bool, one per row
    reasons: pd.Series  # str, indexed by row position, only for bad rows
    sample_columns: tuple[str, ...] = ()


@dataclass
class QualityReport:
    rows: int
    checks: list[CheckResult]
    rules: list[RowRule]
    evaluated_at: datetime
    columns_missing: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        """Blocking checks that failed on the input as given."""
        return [c for c in self.checks if c.blocking and not c.success]

    @property
    def success(self) -> bool:
        return not self.failed

    def invalid_mask(self) -> np.ndarray:
        """Rows breaking at least one row-level rule."""
        bad = np.zeros(self.rows, dtype=bool)
        for rule in self.rules:
            bad |= rule.bad
        return bad

    def quarantine_reasons(self) -> pd.Series:
        """'; '-joined reasons per invalid row, indexed by row position."""
        parts = [rule.reasons for rule in self.rules if len(rule.reasons)]
        if not parts:
            return pd.Series([], dtype=object)
        joined = pd.concat(parts).groupby(level=0, sort=True).agg("; ".join)
        return joined

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks: {', '.join(c.name for c in self.checks)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "evaluated_at": self.evaluated_at.isoformat(timespec="seconds"),
            "success": self.success,
            "columns_missing": self.columns_missing,
            "failed_expectations": [c.name for c in self.failed],
            "expectations": [c.to_json() for c in self.checks],
        }


# ---------------------------------------------------------------------------------------------- helpers


def _json_safe(value: Any) -> Any:
    """Plain JSON values from numpy / pandas scalars (NaN and NaT become null)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        return [_json_safe(v) for v in value]
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _is_string_column(s: pd.Series) -> bool:
    if isinstance(s.dtype, pd.StringDtype):
        return True
    if s.dtype == object:
        values = s.dropna()
        return bool(values.map(lambda v: isinstance(v, str)).all())
    return False


def _is_tz_datetime(s: pd.Series) -> bool:
    return isinstance(s.dtype, pd.DatetimeTZDtype)


def column_has_type(s: pd.Series, expected: str) -> bool:
    """The pandas-side twin of the GX type expectation (used to skip checks on mistyped columns)."""
    if expected == "str":
        return _is_string_column(s)
    if expected == "Timestamp":
        return _is_tz_datetime(s)
    return str(s.dtype) == expected


def _fmt_number(x: float) -> str:
    return f"{x:g}"


def _fmt_duration(td: timedelta) -> str:
    seconds = td.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _row_sample(df: pd.DataFrame, bad: np.ndarray, extra: tuple[str, ...]) -> list[dict[str, Any]]:
    """Up to SAMPLE_ROWS offending rows, located by source file and row so users can find them."""
    positions = np.flatnonzero(bad)[:SAMPLE_ROWS]
    cols = [c for c in ("source_file", "source_row", *KEY_COLUMNS, *extra) if c in df.columns]
    cols = list(dict.fromkeys(cols))
    return [_json_safe(df.iloc[p][cols].to_dict()) for p in positions]


def _reason_series(df: pd.DataFrame, bad: np.ndarray, make: Any) -> pd.Series:
    """Per-row reason strings for the bad rows (`make(row_frame) -> iterable of str`)."""
    positions = np.flatnonzero(bad)
    if not len(positions):
        return pd.Series([], dtype=object)
    sub = df.iloc[positions]
    if isinstance(make, str):
        return pd.Series([make] * len(positions), index=positions, dtype=object)
    return pd.Series(list(make(sub)), index=positions, dtype=object)


# ---------------------------------------------------------------------------------------------- rules


def add_catalog_column(df: pd.DataFrame, catalog_ids: set[str] | None) -> pd.DataFrame:
    """Copy of `df` with `item_in_catalog` (nullable bool; null where item_id is null) if there is a catalog."""
    out = df.copy()
    if catalog_ids is not None and "item_id" in out.columns:
        in_cat = out["item_id"].isin(catalog_ids).astype("boolean")
        # A null id is reported by its own rule, not twice: null there.
        out[IN_CATALOG] = in_cat.mask(out["item_id"].isna())
    return out


def duplicate_of(df: pd.DataFrame, eligible: np.ndarray) -> pd.Series:
    """For each eligible row repeating an earlier eligible (user_id, item_id, timestamp): where the first is.

    Only rows that pass every other row rule take part, so a repeat of a quarantined row is kept as
    the first valid occurrence. Values are 'FILE:LINE' (`position`); null for non-repeats.
    """
    out = pd.Series(pd.NA, index=df.index, dtype=object)
    if not all(c in df.columns for c in KEY_COLUMNS) or not len(df):
        return out.astype("str")
    keys = df.loc[eligible, list(KEY_COLUMNS)]
    repeat = keys.duplicated(keep="first").to_numpy()
    if repeat.any():
        src_file = df["source_file"].astype(str) if "source_file" in df else pd.Series("?", index=df.index)
        src_row = df["source_row"] if "source_row" in df else pd.Series(np.arange(len(df)) + 1, index=df.index)
        where = pd.Series(
            [position(f, int(r), compact=True) for f, r in zip(src_file, src_row)], index=df.index, dtype=object
        )
        group = keys.groupby(list(KEY_COLUMNS), sort=False).ngroup().to_numpy()
        first_label = pd.Series(keys.index.to_numpy()).groupby(group).transform("first").to_numpy()
        out.loc[keys.index[repeat]] = where.loc[first_label[repeat]].to_numpy()
    return out.astype("str")


def row_rules(
    df: pd.DataFrame, cfg: ValidationConfig, now: datetime, catalog: bool, typed: dict[str, bool]
) -> list[RowRule]:
    """Row-level rules on value checks (all but repeats); `df` already has `item_in_catalog`."""
    rules: list[RowRule] = []
    n = len(df)

    def add(name: str, bad: np.ndarray, reason: Any, sample_columns: tuple[str, ...] = ()) -> None:
        bad = np.asarray(bad, dtype=bool)
        rules.append(RowRule(name, bad, _reason_series(df, bad, reason), sample_columns))

    if "ingest_issue" in df.columns:
        add(
            "rows_parsed_cleanly",
            df["ingest_issue"].notna().to_numpy(),
            lambda sub: ("ingest: " + sub["ingest_issue"].astype(str)).tolist(),
            ("ingest_issue",),
        )
    for col in KEY_COLUMNS:
        if col in df.columns:
            add(f"{col}_not_null", df[col].isna().to_numpy(), f"{col} is null")
    if cfg.rating_range is not None and typed.get("rating"):
        lo, hi = cfg.rating_range
        r = df["rating"]
        bad = (r.notna() & ((r < lo) | (r > hi))).to_numpy()
        add(
            "rating_in_range",
            bad,
            lambda sub: [
                f"rating {_fmt_number(v)} outside [{_fmt_number(lo)}, {_fmt_number(hi)}]" for v in sub["rating"]
            ],
            ("rating",),
        )
    if cfg.allowed_event_types is not None and typed.get("event_type"):
        allowed = list(cfg.allowed_event_types)
        e = df["event_type"]
        bad = (e.notna() & ~e.isin(allowed)).to_numpy()
        add(
            "event_type_allowed",
            bad,
            lambda sub: [f"event type {v!r} is not one of {allowed}" for v in sub["event_type"]],
            ("event_type",),
        )
    if typed.get("timestamp"):
        limit = pd.Timestamp(now) + cfg.future_tolerance
        t = df["timestamp"]
        bad = (t.notna() & (t > limit)).to_numpy()
        tol = _fmt_duration(cfg.future_tolerance)
        add(
            "timestamp_not_in_future",
            bad,
            lambda sub: [
                f"timestamp {v.isoformat()} is in the future (later than now + {tol})" for v in sub["timestamp"]
            ],
        )
    if catalog and IN_CATALOG in df.columns:
        bad = (df[IN_CATALOG] == False).fillna(False).to_numpy(dtype=bool)  # noqa: E712 (nullable bool)
        add("catalog_coverage", bad, "item not in the catalog")
    assert all(len(r.bad) == n for r in rules)
    return rules


def duplicate_rule(df: pd.DataFrame) -> RowRule:
    """The row rule over the `duplicate_of` column (see `duplicate_of`)."""
    bad = df[DUPLICATE_OF].notna().to_numpy()
    reasons = _reason_series(
        df, bad, lambda sub: [f"duplicate of {v} (same user, item and timestamp)" for v in sub[DUPLICATE_OF]]
    )
    return RowRule("duplicate_rate", bad, reasons, (DUPLICATE_OF,))


# ---------------------------------------------------------------------------------------------- suites


@dataclass
class _Planned:
    """A check to run in GX: its recloop name, description and the expectation object."""

    name: str
    description: str
    expectation: Any
    row_level: bool = False


def _interaction_expectations(
    df: pd.DataFrame, cfg: ValidationConfig, now: datetime, catalog: bool, typed: dict[str, bool]
) -> list[_Planned]:
    quiet_great_expectations()
    import great_expectations.expectations as gxe

    def meta(name: str) -> dict[str, str]:
        return {"recloop_check": name}

    plan: list[_Planned] = [
        _Planned(
            "columns_present",
            f"the contract columns are present: {', '.join(INTERACTION_TYPES)}",
            gxe.ExpectTableColumnsToMatchSet(
                column_set=list(INTERACTION_TYPES), exact_match=False, meta=meta("columns_present")
            ),
        ),
        _Planned(
            "min_rows",
            f"at least {cfg.min_rows} interactions",
            gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows, meta=meta("min_rows")),
        ),
    ]
    for col, type_ in INTERACTION_TYPES.items():
        if col in df.columns:
            name = f"type:{col}"
            plan.append(
                _Planned(
                    name,
                    f"{col} is {_TYPE_WORDS[type_]}",
                    gxe.ExpectColumnValuesToBeOfType(column=col, type_=type_, meta=meta(name)),
                )
            )
    if "ingest_issue" in df.columns:
        plan.append(
            _Planned(
                "rows_parsed_cleanly",
                "every row was parsed cleanly by ingest (ingest_issue is null)",
                gxe.ExpectColumnValuesToBeNull(column="ingest_issue", meta=meta("rows_parsed_cleanly")),
                row_level=True,
            )
        )
    for col in KEY_COLUMNS:
        if col in df.columns:
            name = f"{col}_not_null"
            plan.append(
                _Planned(
                    name,
                    f"{col} is never null",
                    gxe.ExpectColumnValuesToNotBeNull(column=col, meta=meta(name)),
                    row_level=True,
                )
            )
    if cfg.rating_range is not None and typed.get("rating"):
        lo, hi = cfg.rating_range
        plan.append(
            _Planned(
                "rating_in_range",
                f"ratings lie in [{_fmt_number(lo)}, {_fmt_number(hi)}]",
                gxe.ExpectColumnValuesToBeBetween(
                    column="rating", min_value=lo, max_value=hi, meta=meta("rating_in_range")
                ),
                row_level=True,
            )
        )
    if cfg.allowed_event_types is not None and typed.get("event_type"):
        plan.append(
            _Planned(
                "event_type_allowed",
                f"event types are among {list(cfg.allowed_event_types)}",
                gxe.ExpectColumnValuesToBeInSet(
                    column="event_type", value_set=list(cfg.allowed_event_types), meta=meta("event_type_allowed")
                ),
                row_level=True,
            )
        )
    if typed.get("timestamp"):
        limit = pd.Timestamp(now) + cfg.future_tolerance
        plan.append(
            _Planned(
                "timestamp_not_in_future",
                f"no event later than the validation time + {_fmt_duration(cfg.future_tolerance)} ({limit.isoformat()})",
                gxe.ExpectColumnValuesToBeBetween(
                    column="timestamp", max_value=limit, meta=meta("timestamp_not_in_future")
                ),
                row_level=True,
            )
        )
    if DUPLICATE_OF in df.columns:
        rate = cfg.max_duplicate_rate
        plan.append(
            _Planned(
                "duplicate_rate",
                f"at most {rate:.2%} of events repeat an earlier (user_id, item_id, timestamp)",
                gxe.ExpectColumnValuesToBeNull(
                    column=DUPLICATE_OF,
                    mostly=1.0 - rate,
                    meta=meta("duplicate_rate"),
                    description=f"At most {rate:.2%} of events repeat an earlier "
                    "event with the same user, item and timestamp.",
                ),
                row_level=True,
            )
        )
    if catalog and IN_CATALOG in df.columns:
        cov = cfg.min_catalog_coverage
        plan.append(
            _Planned(
                "catalog_coverage",
                f"at least {cov:.2%} of interactions are on items present in the catalog",
                gxe.ExpectColumnValuesToBeInSet(
                    column=IN_CATALOG,
                    value_set=[True],
                    mostly=cov,
                    meta=meta("catalog_coverage"),
                    description=f"At least {cov:.2%} of interactions are on items present in the catalog.",
                ),
                row_level=True,
            )
        )
    return plan


def _item_expectations(items: pd.DataFrame) -> list[_Planned]:
    quiet_great_expectations()
    import great_expectations.expectations as gxe

    if "item_id" not in items.columns:
        return [
            _Planned(
                "catalog:columns_present",
                "the catalog has an item_id column",
                gxe.ExpectColumnToExist(column="item_id", meta={"recloop_check": "catalog:columns_present"}),
            )
        ]
    return [
        _Planned(
            "catalog:item_id_not_null",
            "catalog item ids are never null",
            gxe.ExpectColumnValuesToNotBeNull(column="item_id", meta={"recloop_check": "catalog:item_id_not_null"}),
        ),
        _Planned(
            "catalog:item_id_unique",
            "catalog item ids are unique",
            gxe.ExpectColumnValuesToBeUnique(column="item_id", meta={"recloop_check": "catalog:item_id_unique"}),
        ),
    ]


def quiet_great_expectations() -> None:
    """GX logs hundreds of INFO lines per run ("Skipping registering function ..."), burying recloop's own
    lines in the validate log: keep its warnings and errors only."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def run_great_expectations(
    suites: list[tuple[str, pd.DataFrame, list[_Planned]]], docs_dir: Path | None, run_name: str, now: datetime
) -> dict[str, Any]:
    """Run each (suite name, frame, planned checks) in one ephemeral GX context; results by check name.

    With `docs_dir`, GX's site builder renders Data Docs (suites and validation results) into it.
    """
    quiet_great_expectations()
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites["recloop"] = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    project = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    context = gx.get_context(mode="ephemeral", project_config=project)
    datasource = context.data_sources.add_pandas("recloop")
    run_id = RunIdentifier(run_name=run_name, run_time=now)
    results: dict[str, Any] = {}
    for suite_name, frame, planned in suites:
        batch = datasource.add_dataframe_asset(suite_name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
        for p in planned:
            suite.add_expectation(p.expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite_name}-validation", data=batch, suite=suite)
        )
        outcome = definition.run(batch_parameters={"dataframe": frame}, result_format="BASIC", run_id=run_id)
        for r in outcome.results:
            if r.expectation_config is None:
                raise RuntimeError(
                    f"great_expectations returned a result of suite {suite_name} without its expectation"
                )
            results[r.expectation_config.meta["recloop_check"]] = r
    if docs_dir is not None:
        context.build_data_docs(site_names=["recloop"])
    return results


# ---------------------------------------------------------------------------------------------- report


def _recloop_checks(valid: pd.DataFrame, items: pd.DataFrame | None, cfg: ValidationConfig) -> list[CheckResult]:
    """Recommender checks GX has no expectation for, computed on the rows that pass the row rules."""
    checks: list[CheckResult] = []
    for entity, col, minimum in (
        ("users", "user_id", cfg.min_interactions_per_user),
        ("items", "item_id", cfg.min_interactions_per_item),
    ):
        if col not in valid.columns:
            continue
        counts = valid[col].value_counts()
        below = counts[counts < minimum].sort_values(kind="stable")
        checks.append(
            CheckResult(
                name=f"{entity}_min_interactions",
                description=f"{entity} with fewer than {minimum} interactions (reported; preprocess filters them)",
                source="recloop",
                success=below.empty,
                blocking=False,
                kwargs={"min_interactions": minimum},
                observed_value={f"{entity}": int(len(counts)), f"{entity}_below_min": int(len(below))},
                unexpected_count=int(len(below)),
                unexpected_percent=100.0 * len(below) / len(counts) if len(counts) else None,
                sample_rows=[{col: str(k), "interactions": int(v)} for k, v in below.head(SAMPLE_ROWS).items()],
            )
        )
    if items is not None and "item_id" in items.columns and "item_id" in valid.columns:
        catalog = pd.Index(items["item_id"].dropna().unique())
        cold = catalog.difference(pd.Index(valid["item_id"].dropna().unique()))
        share = len(cold) / len(catalog) if len(catalog) else 0.0
        checks.append(
            CheckResult(
                name="cold_start_share",
                description=f"at most {cfg.max_cold_start_share:.2%} of catalog items have no interactions",
                source="recloop",
                success=share <= cfg.max_cold_start_share,
                blocking=True,
                kwargs={"max_cold_start_share": cfg.max_cold_start_share},
                observed_value=share,
                unexpected_count=int(len(cold)),
                unexpected_percent=100.0 * share,
                sample_rows=[{"item_id": str(i)} for i in sorted(cold)[:SAMPLE_ROWS]],
            )
        )
    return checks


def catalog_rows_check(dropped: dict[str, int], kept: int) -> CheckResult:
    """Catalog rows ingest set aside (unreadable, e.g. an unterminated quote, or without an id) fail
    validation like bad interaction rows: `on_failure: fail` stops, quarantine keeps them set aside."""
    bad = int(dropped.get("broken_rows", 0)) + int(dropped.get("missing_id", 0))
    read = kept + bad
    return CheckResult(
        name="catalog_rows_readable",
        description="every catalog row is readable and has an item id (ingest's log names the first rows)",
        source="recloop",
        success=bad == 0,
        blocking=True,
        row_level=True,  # set aside at ingest: quarantine needs nothing more
        kwargs={},
        observed_value={k: int(dropped.get(k, 0)) for k in ("broken_rows", "missing_id")},
        unexpected_count=bad,
        unexpected_percent=100.0 * bad / read if read else None,
    )


def _from_gx(p: _Planned, r: Any, df: pd.DataFrame, rule: RowRule | None) -> CheckResult:
    result = dict(r.result or {})
    config = r.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    error = r.exception_info.get("exception_message") if r.exception_info.get("raised_exception") else None
    samples: list[dict[str, Any]] = []
    if rule is not None and rule.bad.any():
        samples = _row_sample(df, rule.bad, rule.sample_columns)
    elif result.get("partial_unexpected_list"):
        samples = [{"value": v} for v in result["partial_unexpected_list"][:SAMPLE_ROWS]]
    return CheckResult(
        name=p.name,
        description=p.description,
        source="great_expectations",
        success=bool(r.success),
        blocking=True,
        row_level=p.row_level,
        expectation_type=config.type,
        kwargs=_json_safe(kwargs),
        observed_value=_json_safe(result.get("observed_value")),
        unexpected_count=result.get("unexpected_count"),
        unexpected_percent=result.get("unexpected_percent"),
        sample_rows=samples,
        error=error,
    )


def check_interactions(
    interactions: pd.DataFrame,
    items: pd.DataFrame | None,
    cfg: ValidationConfig,
    now: datetime,
    docs_dir: Path | None = None,
    run_name: str = "recloop",
    catalog_dropped: dict[str, int] | None = None,
) -> QualityReport:
    """Validate ingest's interactions (and catalog, if any) against `cfg`; `now` anchors the future check.
    `catalog_dropped`: the catalog rows ingest could not read or had no id (its summary's counts)."""
    interactions = interactions.reset_index(drop=True)
    catalog_ids = set(items["item_id"].dropna().astype(str)) if items is not None and "item_id" in items else None
    has_catalog = catalog_ids is not None
    typed = {
        col: column_has_type(interactions[col], t)
        for col, t in INTERACTION_TYPES.items()
        if col in interactions.columns
    }
    frame = add_catalog_column(interactions, catalog_ids)
    rules = row_rules(frame, cfg, now, has_catalog, typed)
    otherwise_valid = np.ones(len(frame), dtype=bool)
    for rule in rules:
        otherwise_valid &= ~rule.bad
    frame[DUPLICATE_OF] = duplicate_of(frame, otherwise_valid)
    rules.append(duplicate_rule(frame))
    planned = _interaction_expectations(frame, cfg, now, has_catalog, typed)
    suites = [("interactions", frame, planned)]
    if items is not None:
        suites.append(("catalog", items, _item_expectations(items)))
    gx_results = run_great_expectations(suites, docs_dir, run_name, now)

    by_rule = {rule.name: rule for rule in rules}
    checks = [_from_gx(p, gx_results[p.name], frame, by_rule.get(p.name)) for _, _, plan in suites for p in plan]
    bad = np.zeros(len(frame), dtype=bool)
    for rule in rules:
        bad |= rule.bad
    valid = frame.loc[~bad]
    checks.extend(_recloop_checks(valid, items, cfg))
    if catalog_dropped is not None:
        checks.append(catalog_rows_check(catalog_dropped, kept=len(items) if items is not None else 0))
    missing = [c for c in INTERACTION_TYPES if c not in interactions.columns]
    return QualityReport(rows=len(interactions), checks=checks, rules=rules, evaluated_at=now, columns_missing=missing)


REASON_COLUMNS = ("ingest_issue", "quarantine_reason")


def _clip(value: object, limit: int = 120) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(check: CheckResult, samples: int) -> list[str]:
    count = ""
    if check.unexpected_count is not None:
        pct = f" ({check.unexpected_percent:.2f}%)" if check.unexpected_percent is not None else ""
        unit = ("row" if check.unexpected_count == 1 else "rows") if check.row_level else "found"
        count = f": {check.unexpected_count} {unit}{pct}"
    elif check.observed_value is not None:
        count = f": observed {json.dumps(check.observed_value, default=str)[:120]}"
    lines = [f"  - {check.name} ({check.description}){count}"]
    if check.error:
        lines.append(f"      error: {check.error[:200]}")
    for row in check.sample_rows[:samples]:
        where = f"{position(row['source_file'], int(row['source_row']))}: " if "source_file" in row else ""
        # Each value is bounded, not the line: file paths (where, duplicate_of) must survive intact
        # whatever the folder the data lives in; reasons are never cut (they end with the fix), and bound
        # the data values they quote themselves.
        rest = ", ".join(
            f"{k}={v if k in REASON_COLUMNS else _clip(v)}"
            for k, v in row.items()
            if k not in ("source_file", "source_row")
        )
        lines.append(f"      {where}{rest}")
    return lines


def format_failure(
    report: QualityReport,
    input_uri: str,
    report_uri: str,
    quarantined: int | None = None,
    problems: list[str] | None = None,
    max_checks: int = 8,
) -> str:
    """A one-screen summary: each failed check with up to 3 sample rows, then where the full report is.

    `quarantined` (quarantine mode): how many rows were set aside; `problems` why that was not enough.
    """
    failed = report.failed
    n_checks = sum(c.blocking for c in report.checks)
    if quarantined is None:
        more = f"; and {len(problems)} other problem(s)" if problems else ""
        lines = [
            f"data validation failed for {input_uri} ({report.rows} rows): {len(failed)} of {n_checks} checks "
            f"failed{more}"
        ]
        lines.extend(f"  - {p}" for p in problems or [])
        shown = failed
        hint = (
            "Fix the data at its source, relax the thresholds in the `validation` section, or set "
            "validation.on_failure: quarantine to set bad rows aside."
        )
    else:
        lines = [
            f"data validation failed for {input_uri} ({report.rows} rows) even after quarantining "
            f"{quarantined} bad rows:"
        ]
        lines.extend(f"  - {p}" for p in problems or [])
        shown = [c for c in failed if not c.row_level]
        row_level = [c for c in failed if c.row_level]
        if row_level:
            lines.append(
                "  rows were quarantined for: " + ", ".join(f"{c.name} ({c.unexpected_count})" for c in row_level)
            )
        hint = (
            "Fix the data at its source, or relax validation.min_valid_share / the failing thresholds "
            "in the `validation` section."
        )
    for check in shown[:max_checks]:
        lines.extend(_describe(check, samples=3 if len(shown) <= 4 else 2))
    if len(shown) > max_checks:
        lines.append(f"  ... and {len(shown) - max_checks} more (see the report)")
    lines.append(f"Full report: {report_uri}")
    lines.append(hint)
    return "\n".join(lines)
