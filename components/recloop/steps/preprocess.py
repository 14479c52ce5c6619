"""preprocess: turn validated interactions into contiguous-id train / valid / test splits.

Input: validate's `interactions.parquet` when validate quarantined rows (it then lists that file), else
ingest's; the catalog is ingest's `items.parquet` when it wrote one. The work itself is the pure
`recloop.data.preprocess.preprocess` (its docstring lists the stages); this step reads, calls and writes.

Output: `train.parquet`, `valid.parquet`, `test.parquet` (user_idx int32, item_idx int32, timestamp int64
epoch seconds, weight float32, rating float64; sorted by user, time, source order), `id_maps/users.parquet`,
`id_maps/items.parquet`, `items.parquet` (item_idx, item_id, text, categories) and `stats.json`; with
`evaluation.cold_start.item_share > 0` also `cold_items.parquet`: items held out of train and valid
entirely, whose test events measure how well a model recommends items it never saw interacted with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recloop.artifacts.kinds import Dataset, RawEvents, ValidationReport
from recloop.steps.base import StepContext

if TYPE_CHECKING:
    import pandas as pd

    from recloop.artifacts import ArtifactWriter, Manifest
    from recloop.data.preprocess import PreprocessResult


# ---------------------------------------------------------------------------------------------- I/O


def _choose_source(
    ctx: StepContext, inputs: dict[str, str]
) -> tuple[RawEvents | ValidationReport, RawEvents, list[str]]:
    """(interactions artifact, ingest artifact, parents): validate's valid rows when it wrote them."""
    ingest = RawEvents(ctx.open(inputs["ingest"]))
    parents = [inputs["ingest"]]
    if "validate" in inputs:
        validate = ValidationReport(ctx.open(inputs["validate"]))
        parents.append(inputs["validate"])
        if validate.summary.get("success") is False:
            ctx.log(f"preprocess: validation reported failures ({validate.uri}); continuing as configured")
        if validate.has_valid_rows:
            return validate, ingest, parents
    return ingest, ingest, parents


def _put_parquet(writer: ArtifactWriter, name: str, df: pd.DataFrame, schema: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    path = writer.local(name)
    pq.write_table(table, path)
    writer.add_file(name, path, rows=table.num_rows, schema={f.name: str(f.type) for f in table.schema})


# ---------------------------------------------------------------------------------------------- step


def run(ctx: StepContext, inputs: dict[str, str], output: str) -> Manifest:
    from recloop.data.preprocess import heldout_drops, preprocess

    source, ingest, parents = _choose_source(ctx, inputs)
    advance = ctx.progress("preprocess", total=5)
    result = preprocess(
        source.interactions(),
        ingest.items(),
        ctx.config.preprocess,
        ctx.config.evaluation.cold_start,
        source=source.uri,
        progress=advance,
    )
    users = ctx.config.data.users
    with ctx.writer(output, parents=parents) as writer:
        _write(writer, result)
        if users is not None and users.attributes:
            from recloop.data.users import user_side_frame

            frame = user_side_frame(ingest.users(), result.user_ids, users)
            writer.put_parquet(Dataset.USERS, frame)
            writer.summary["user_attributes"] = {
                name: round(float(frame[name].notna().mean()), 4) for name in users.attributes
            }
            writer.summary["user_attribute_types"] = {name: spec.type for name, spec in users.attributes.items()}
    advance(1)
    dropped = heldout_drops(result.stats["dropped"], ctx.config.preprocess, ctx.config.data.items is not None)
    if dropped:
        ctx.log(f"preprocess: WARNING {dropped}")
    train, valid, test = (len(result.splits[name]) for name in ("train", "valid", "test"))
    ctx.log(
        f"preprocess: {len(result.user_ids)} users, {len(result.item_ids)} items, train/valid/test = "
        f"{train}/{valid}/{test} -> {output}"
    )
    return writer.manifest


def _write(writer: ArtifactWriter, result: PreprocessResult) -> None:
    """The splits, id maps, item frame, cold items and stats as the artifact's files and summary."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    id_schema = {
        kind: pa.schema([(f"{kind}_idx", pa.int32()), (f"{kind}_id", pa.string())]) for kind in ("user", "item")
    }
    split_schema = pa.schema(
        [
            ("user_idx", pa.int32()),
            ("item_idx", pa.int32()),
            ("timestamp", pa.int64()),
            ("weight", pa.float32()),
            ("rating", pa.float64()),
        ]
    )
    for name, frame in result.splits.items():
        _put_parquet(writer, Dataset.SPLIT_FILES[name], frame, split_schema)
    for kind, name, ids in (("user", Dataset.USER_IDS, result.user_ids), ("item", Dataset.ITEM_IDS, result.item_ids)):
        _put_parquet(
            writer,
            name,
            pd.DataFrame({f"{kind}_idx": np.arange(len(ids), dtype=np.int32), f"{kind}_id": ids}),
            id_schema[kind],
        )
    _put_parquet(
        writer,
        Dataset.ITEMS,
        result.items,
        pa.schema(
            [
                ("item_idx", pa.int32()),
                ("item_id", pa.string()),
                ("text", pa.string()),
                ("categories", pa.list_(pa.string())),
            ]
        ),
    )
    if result.cold_items is not None:
        _put_parquet(writer, Dataset.COLD_ITEMS, result.cold_items, id_schema["item"])
        writer.summary["n_cold_items"] = len(result.cold_items)
    writer.put_json(Dataset.STATS, result.stats)
    writer.summary.update(
        {
            "n_users": len(result.user_ids),
            "n_items": len(result.item_ids),
            **{f"n_{name}": len(frame) for name, frame in result.splits.items()},
            "density": result.stats["density"],
            # Held-out events dropped for lack of an id: not evaluated (heldout_drops says which setting keeps them).
            "heldout_events_dropped": {
                k: int(result.stats["dropped"].get(k, 0))
                for k in ("heldout_item_without_id", "heldout_user_without_training_events")
            },
            "split": result.split_info["method"],
            **{k: v for k, v in result.split_info.items() if k != "method"},
        }
    )
