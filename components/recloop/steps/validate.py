"""validate: check ingested interactions with a great-expectations suite before anything learns from them.

Reads ingest's `interactions.parquet` (and `items.parquet` if present), runs `recloop.data.quality` and
writes `result.json` plus GX Data Docs (`data_docs/`). What happens on failure is `validation.on_failure`:

- `fail`: the report goes to the sibling artifact `runs/{run_id}/validate-failed/` and the step raises
  `ValidationFailed` (exit code 3) with a one-screen summary naming each failed check with sample rows.
- `quarantine`: rows breaking a row-level rule go to `quarantine/interactions.parquet` with a
  `quarantine_reason`; the rest to `interactions.parquet` (read by preprocess). The step fails only if
  the valid share drops below `min_valid_share`, fewer than `min_rows` rows remain, or a check that
  cannot be fixed row by row fails (missing columns, wrong types, cold-start share).
- `warn`: logs the failures and passes; preprocess then reads ingest's interactions.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recloop.artifacts import MANIFEST, Artifact
from recloop.artifacts.kinds import RawEvents, ValidationReport
from recloop.errors import ArtifactError, ValidationFailed
from recloop.steps.base import StepContext

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from recloop.artifacts import Manifest
    from recloop.data.users import AttributeCheck

FAILED_SUFFIX = "-failed"


def run(ctx: StepContext, inputs: dict[str, str], output: str) -> Manifest:
    import numpy as np
    import pyarrow as pa

    from recloop.data.quality import check_interactions, format_failure

    cfg = ctx.config.validation
    ingest_uri = inputs["ingest"]
    ingest = RawEvents(ctx.open(ingest_uri))
    if not ingest.has(RawEvents.INTERACTIONS):
        raise ArtifactError(f"{ingest_uri} has no {RawEvents.INTERACTIONS}; re-run ingest")
    table = ingest.interactions_table()
    catalog = ingest.items()
    interactions: pd.DataFrame = table.to_pandas()
    items = catalog[[c for c in catalog.columns if c == "item_id"]] if catalog is not None else None

    advance = ctx.progress("validate: running expectations", total=3)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="recloop-validate-") as tmp:
        docs_dir = Path(tmp, ValidationReport.DATA_DOCS) if cfg.data_docs else None
        dropped = (ingest.artifact.manifest.summary.get("dropped") or {}).get("items") if catalog is not None else None
        report = check_interactions(
            interactions, items, cfg, now, docs_dir, run_name=ctx.run_id, catalog_dropped=dropped
        )
        advance(1)

        invalid = report.invalid_mask()
        n_invalid = int(invalid.sum())
        n_rows = report.rows
        quarantine = cfg.on_failure == "quarantine"
        n_bad = n_invalid if quarantine else 0
        n_valid = n_rows - n_bad
        valid_share = n_valid / n_rows if n_rows else 0.0

        # What still fails once bad rows are set aside: checks no row filter can fix, and the volume.
        problems: list[str] = []
        if quarantine:
            unfixable = [c for c in report.failed if not c.row_level]
            if n_rows and valid_share < cfg.min_valid_share:
                problems.append(
                    f"only {n_valid} of {n_rows} rows ({valid_share:.2%}) are valid; "
                    f"validation.min_valid_share is {cfg.min_valid_share:.2%}"
                )
            if n_valid < cfg.min_rows:
                problems.append(f"{n_valid} valid rows remain; validation.min_rows is {cfg.min_rows}")
            success = not unfixable and not problems
        else:
            success = report.success
        user_checks, user_problems = _check_user_attributes(ctx, ingest)
        problems += user_problems
        success = success and not user_problems

        result = report.to_json()
        result.update(
            {
                "input": ingest_uri,
                "on_failure": cfg.on_failure,
                "success": success,
                "rows": n_rows,
                "valid_rows": n_valid,
                "quarantined_rows": n_bad,
                "invalid_rows": n_invalid,
                "valid_share": valid_share,
                "problems": problems,
                "user_attributes": [vars(c) | {"ok": c.ok} for c in user_checks],
                "data_docs": ValidationReport.DATA_DOCS_INDEX if docs_dir is not None else None,
            }
        )
        summary = {
            "success": success,
            "rows": n_rows,
            "valid_rows": n_valid,
            "quarantined_rows": n_bad,
            "invalid_rows": n_invalid,
            "failed_expectations": [c.name for c in report.failed],
        }

        valid_table = quarantined = None
        if n_bad:
            keep = pa.array(~invalid)
            valid_table = table.filter(keep)
            reasons = report.quarantine_reasons()
            positions = np.flatnonzero(invalid)
            quarantined = table.take(pa.array(positions)).append_column(
                "quarantine_reason", pa.array(reasons.reindex(positions).tolist(), pa.string())
            )

        if not success and cfg.on_failure in ("fail", "quarantine"):
            _uncommit(ctx, ctx.key(output))  # an older success of this step must not be read downstream
            failed_uri = _commit_failure(ctx, output, ingest_uri, result, summary, docs_dir, quarantined)
            where = f"{failed_uri}/{ValidationReport.RESULT}"
            if docs_dir is not None:
                where += f" (Data Docs: {failed_uri}/{ValidationReport.DATA_DOCS_INDEX})"
            raise ValidationFailed(
                format_failure(report, ingest_uri, where, quarantined=n_bad if quarantine else None, problems=problems),
                report_uri=failed_uri,
            )
        if not report.success:
            failed = ", ".join(c.name for c in report.failed)
            if quarantine:
                ctx.log(f"validate: quarantined {n_bad} of {n_rows} rows (failed: {failed})")
            else:
                ctx.log(
                    f"validate: WARNING data failed {len(report.failed)} checks ({failed}); "
                    "continuing because validation.on_failure is 'warn'"
                )
        advance(1)

        stale_failure = ctx.key(output) + FAILED_SUFFIX
        if Artifact.exists(ctx.store, stale_failure):
            ctx.log(f"validate: removing the report of an earlier failed attempt ({ctx.store.uri(stale_failure)})")
            _uncommit(ctx, stale_failure)
        with ctx.writer(output, parents=[ingest_uri]) as writer:
            ValidationReport.write(writer, result, docs_dir, valid_rows=valid_table, quarantined=quarantined)
            writer.summary.update(summary)
        advance(1)
    ctx.log(f"validate: {n_valid} valid rows, {n_bad} quarantined -> {output}")
    return writer.manifest


def _uncommit(ctx: StepContext, key: str) -> None:
    """Remove an artifact: its manifest first, so no reader sees a half-deleted folder."""
    ctx.store.delete(f"{key}/{MANIFEST}")
    ctx.store.delete_prefix(key)


def _check_user_attributes(ctx: StepContext, ingest: RawEvents) -> tuple[list[AttributeCheck], list[str]]:
    """The configured user attributes' checks (none without `data.users.attributes`), and the problems
    that fail validation; invalid values that stay within `max_missing`, and everything under
    `on_failure: warn`, are logged as warnings instead."""
    from recloop.data.users import check_attributes

    users = ctx.config.data.users
    if users is None or not users.attributes:
        return [], []
    table = ingest.users()
    if table is None:
        raise ArtifactError(f"{ingest.uri} has no {RawEvents.USERS} though data.users is configured; re-run ingest")
    checks = check_attributes(table, users)
    problems = []
    for check in checks:
        if check.ok and not check.invalid:
            continue
        if check.ok or ctx.config.validation.on_failure == "warn":
            ctx.log(f"validate: WARNING {check.describe()}")
        else:
            problems.append(check.describe())
    return checks, problems


def _commit_failure(
    ctx: StepContext,
    output: str,
    ingest_uri: str,
    result: dict[str, Any],
    summary: dict[str, Any],
    docs_dir: Path | None,
    quarantined: pa.Table | None,
) -> str:
    """Commit the report to the sibling `validate-failed` artifact so a failed run can be inspected."""
    key = ctx.key(output)
    failed_key = key + FAILED_SUFFIX
    failed_uri = ctx.store.uri(failed_key)
    with ctx.writer(failed_uri, parents=[ingest_uri]) as writer:
        ValidationReport.write(writer, result, docs_dir, quarantined=quarantined)
        writer.summary.update(summary)
    return failed_uri
