"""Publish step: verify the gate's blessing itself, register the candidate as a new model version, then
move the production alias with a compare-and-swap.

Refusals (`NotBlessedError`, every reason listed, recorded in the registry history): the gate did not
bless; the blessing is for another run, another model name, another model type or a candidate the train
artifact does not hold; the blessing's evaluate URI or split fingerprint do not match the evaluate
artifact's `metrics.json`; evaluate was computed from other preprocess/train artifacts than the ones
given. A bundle that fails its hashes or does not load raises `ArtifactError`; a store outage raises
`StoreError`. In every failure the alias is untouched: it is the last thing written.

The alias moves only if production still points at the champion the gate judged the candidate against
(`blessing.champion_version`); otherwise the new version stays registered but unpromoted and the step
raises `AliasConflict` (re-run evaluate and gate so the candidate is compared with the new champion).

`ctx.params.dry_run` registers the version but leaves the alias alone, and commits its report to the
sibling artifact `runs/{run}/publish-dry-run/`, so a later real publish of the run is not skipped as done.
Re-running a publish is idempotent: a version holding the same run's identical bundle is reused.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recloop.artifacts import Artifact, Manifest, safe_run_id
from recloop.artifacts.kinds import Blessing, Dataset, Evaluation, Publication, TrainedModel
from recloop.errors import ArtifactError, NotBlessedError
from recloop.registry import AliasChange, ModelRegistry, VersionSource, format_version
from recloop.steps.base import StepContext

DRY_RUN_SUFFIX = "-dry-run"


@dataclass
class CheckedBlessing:
    """A blessing that passed every check, with the artifacts it was checked against."""

    blessing: dict[str, Any]
    candidate: str
    model_type: str
    champion_version: int | None
    metrics: dict[str, Any]
    split_fingerprint: str
    gate: Artifact
    train: Artifact
    preprocess: Artifact
    evaluate: Artifact


def run(ctx: StepContext, inputs: dict[str, str], output: str) -> Manifest:
    dry_run = ctx.params.dry_run
    registry = ModelRegistry(ctx.store, ctx.config.model_name, actor=f"publish step, run {ctx.run_id}")
    try:
        checked = check_blessing(ctx, inputs, registry.name)
    except NotBlessedError as exc:
        registry.record_quietly("publish", "refused", run_id=ctx.run_id, message=str(exc))
        raise

    with tempfile.TemporaryDirectory(prefix="recloop-publish-") as tmp:
        source = _version_source(ctx, checked, inputs, Path(tmp))
        existing = registry.find_version(source)
        if existing is not None:
            ctx.log(
                f"publish: {existing.uri} already holds this run's {checked.candidate}; reusing v{existing.version}"
            )
            version = existing
        else:
            version = registry.register(source)
            ctx.log(f"publish: registered {checked.candidate} ({checked.model_type}) as {version.uri}")

    change: AliasChange | None = None
    if dry_run:
        current = registry.production()
        current_v = current.version if current else None
        registry.record(
            "publish",
            "dry_run",
            version=version.version,
            previous_version=current_v,
            expected_version=checked.champion_version,
            run_id=ctx.run_id,
            message=f"dry run: v{version.version} registered, production alias not moved",
        )
        ctx.log(
            f"publish: dry run, production alias NOT moved (still {format_version(current_v)}); "
            f"promote with `recloop model promote {registry.name} {version.version}`"
        )
    else:
        change = registry.promote(
            version.version,
            expected=checked.champion_version,
            run_id=ctx.run_id,
            action="publish",
            reason=_reason(checked),
        )
        ctx.log(
            f"publish: production of {registry.name!r}: {format_version(change.from_version)} -> "
            f"{format_version(change.to_version)}" + ("" if change.changed else " (already production)")
        )

    report = {
        "model_name": registry.name,
        "version": version.version,
        "version_uri": version.uri,
        "candidate": checked.candidate,
        "model_type": checked.model_type,
        "dry_run": dry_run,
        "promoted": bool(change and change.to_version == version.version),
        "previous_version": change.from_version if change else checked.champion_version,
        "champion_version": checked.champion_version,
        "alias_uri": ctx.store.uri(registry.alias_key),
        "split_fingerprint": checked.split_fingerprint,
        "reused_version": existing is not None,
    }
    target = output.rstrip("/") + DRY_RUN_SUFFIX if dry_run else output
    parents = [checked.gate.uri, checked.train.uri, checked.preprocess.uri, checked.evaluate.uri]
    with ctx.writer(target, parents=parents) as writer:
        writer.put_json(Publication.PUBLISH, report)
        writer.summary.update(
            {
                k: report[k]
                for k in (
                    "model_name",
                    "version",
                    "version_uri",
                    "candidate",
                    "dry_run",
                    "promoted",
                    "previous_version",
                )
            }
        )
    return writer.manifest


# ---------------------------------------------------------------------------------------------- checks


def check_blessing(ctx: StepContext, inputs: dict[str, str], model_name: str) -> CheckedBlessing:
    """Verify the blessing against the artifacts it claims to describe; NotBlessedError lists every problem."""
    gate = ctx.open(inputs["gate"])
    try:
        blessing = gate.read_json(Blessing.BLESSING)
    except (ArtifactError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotBlessedError(
            f"refusing to publish: the gate artifact {gate.uri} has no readable blessing ({exc}); re-run the gate step"
        ) from None
    if not isinstance(blessing, dict):
        raise NotBlessedError(
            f"refusing to publish: {gate.uri}/{Blessing.BLESSING} is not a JSON object; re-run the gate"
        )
    preprocess = ctx.open(inputs["preprocess"])
    evaluate = ctx.open(inputs["evaluate"])
    reasons: list[str] = []

    decision = blessing.get("decision")
    if decision != "blessed":
        # The gate's own reasons say it all; checking the rest of a rejection would only add noise.
        gate_reasons = [str(r) for r in blessing.get("reasons") or []] or ["no reason given"]
        lines = "\n".join(f"  - {r}" for r in gate_reasons)
        raise NotBlessedError(
            f"refusing to publish run {ctx.run_id!r} to model {model_name!r}: the gate's decision "
            f"in {gate.uri} is {decision!r}, not 'blessed':\n{lines}"
        )

    run_id = blessing.get("run_id")
    if not run_id or (run_id != ctx.run_id and safe_run_id(str(run_id)) != safe_run_id(ctx.run_id)):
        reasons.append(f"the blessing is for run {run_id!r}, but this is run {ctx.run_id!r}")

    blessed_name = blessing.get("model_name")
    if blessed_name is not None and blessed_name != model_name:
        reasons.append(f"the blessing is for model {blessed_name!r}, but this pipeline publishes {model_name!r}")

    candidate = blessing.get("candidate")
    model_type = blessing.get("model_type")
    trained_uris = ctx.candidate_uris(inputs["train"])
    train: Artifact | None = None
    if not isinstance(candidate, str) or not candidate:
        reasons.append("the blessing names no candidate")
    elif candidate not in trained_uris:
        reasons.append(
            f"the blessed candidate {candidate!r} is not among this run's trained candidates in "
            f"{inputs['train']} (it has: {', '.join(trained_uris) or 'none'})"
        )
    else:
        train = ctx.open(trained_uris[candidate])
        trained_type = TrainedModel(train).model_type
        if model_type is None:
            reasons.append("the blessing does not name the model type")
        elif trained_type is not None and trained_type != model_type:
            reasons.append(
                f"the blessing is for a {model_type!r} model, but candidate {candidate!r} in {train.uri} "
                f"is a {trained_type!r} model"
            )

    blessed_eval = blessing.get("evaluate_uri")
    if blessed_eval is None:
        reasons.append("the blessing does not name the evaluate artifact it judged (evaluate_uri)")
    elif _same_artifact(ctx, blessed_eval, inputs["evaluate"]) is False:
        reasons.append(f"the blessing judged metrics of {blessed_eval}, not those of {evaluate.uri}")

    if "champion_version" not in blessing:
        reasons.append("the blessing does not say which champion it was judged against (champion_version)")
    champion = blessing.get("champion_version")
    if champion is not None and (isinstance(champion, bool) or not isinstance(champion, int)):
        reasons.append(f"the blessing's champion_version must be a version number or null (got {champion!r})")
        champion = None

    metrics: dict[str, Any] = {}
    try:
        loaded = evaluate.read_json(Evaluation.METRICS)
        metrics = loaded if isinstance(loaded, dict) else {}
        if not isinstance(loaded, dict):
            reasons.append(f"{evaluate.uri}/{Evaluation.METRICS} is not a JSON object")
    except json.JSONDecodeError as exc:
        reasons.append(f"{evaluate.uri}/{Evaluation.METRICS} is not valid JSON ({exc})")
    blessed_fp = blessing.get("split_fingerprint")
    metrics_fp = metrics.get("split_fingerprint", evaluate.manifest.summary.get("split_fingerprint"))
    if not blessed_fp:
        reasons.append("the blessing has no split fingerprint")
    if not metrics_fp:
        reasons.append(f"{evaluate.uri}/{Evaluation.METRICS} has no split fingerprint")
    if blessed_fp and metrics_fp and blessed_fp != metrics_fp:
        reasons.append(
            f"{evaluate.uri}/{Evaluation.METRICS} is from another split (fingerprint {str(metrics_fp)[:12]}…) "
            f"than the blessing (fingerprint {str(blessed_fp)[:12]}…)"
        )
    candidates_block = metrics.get("candidates")
    if isinstance(candidates_block, dict) and isinstance(candidate, str) and candidate not in candidates_block:
        reasons.append(f"{evaluate.uri}/{Evaluation.METRICS} has no metrics for candidate {candidate!r}")

    # Lineage: the metrics must come from the very preprocess and train artifacts being published.
    for role, uri in (("preprocess", preprocess.uri), ("train", inputs["train"])):
        recorded = metrics.get(f"{role}_uri")
        if isinstance(recorded, str) and not _same_artifact(ctx, recorded, uri):
            reasons.append(f"{evaluate.uri}/{Evaluation.METRICS} measured the {role} artifact {recorded}, not {uri}")
    for role, art in (("preprocess", preprocess), ("train", train)):
        parents = evaluate.manifest.parents
        if art is not None and parents and not any(_same_artifact(ctx, p, art.uri) for p in parents):
            reasons.append(
                f"the evaluate artifact {evaluate.uri} was computed from another {role} artifact "
                f"({', '.join(parents)}), not {art.uri}"
            )
    if (
        train is not None
        and train.manifest.parents
        and not any(_same_artifact(ctx, p, preprocess.uri) for p in train.manifest.parents)
    ):
        reasons.append(
            f"the train artifact {train.uri} was trained on another preprocess artifact "
            f"({', '.join(train.manifest.parents)}), not {preprocess.uri}"
        )

    if reasons:
        lines = "\n".join(f"  - {r}" for r in reasons)
        raise NotBlessedError(
            f"refusing to publish run {ctx.run_id!r} to model {model_name!r}: "
            f"the blessing in {gate.uri} does not hold:\n{lines}\n"
            "Re-run evaluate and gate for this run, or fix the inputs passed to publish."
        )
    assert isinstance(candidate, str) and isinstance(model_type, str) and train is not None
    return CheckedBlessing(
        blessing, candidate, model_type, champion, metrics, str(blessed_fp), gate, train, preprocess, evaluate
    )


def _same_artifact(ctx: StepContext, a: str, b: str) -> bool:
    """Whether two URIs name the same artifact folder of this store (False for foreign or different ones)."""
    try:
        return ctx.key(a).rstrip("/") == ctx.key(b).rstrip("/")
    except ArtifactError:
        return a.rstrip("/") == b.rstrip("/")


# ---------------------------------------------------------------------------------------------- bundle


def _version_source(ctx: StepContext, checked: CheckedBlessing, inputs: dict[str, str], tmp: Path) -> VersionSource:
    """Download and verify everything the version will hold; the bundle must load and fit the id maps."""
    from recloop.models.base import Recommender

    candidate = checked.candidate
    try:
        bundle_dir = checked.train.download_all(tmp / "model")
    except ArtifactError as exc:
        raise ArtifactError(
            f"cannot publish candidate {candidate!r}: its bundle in {checked.train.uri} is "
            f"missing or corrupt ({exc}); re-run the train step"
        ) from None
    try:
        model = Recommender.load(bundle_dir)
    except ArtifactError as exc:
        raise ArtifactError(f"cannot publish candidate {candidate!r}: {exc}") from None
    except (KeyError, ValueError, OSError) as exc:
        raise ArtifactError(
            f"cannot publish candidate {candidate!r}: the bundle in {checked.train.uri} "
            f"does not load ({exc}); re-run the train step"
        ) from None
    if model.type_name != checked.model_type:
        raise ArtifactError(
            f"cannot publish candidate {candidate!r}: its bundle holds a {model.type_name!r} model "
            f"but the blessing is for {checked.model_type!r}; re-run train, evaluate and gate"
        )
    # Large catalogs get an approximate top-k index inside the bundle for `recloop serve` (built
    # deterministically, so re-publishing the same bundle stays idempotent; small ones are skipped).
    from recloop.serving.index import build_ann_index

    ann = build_ann_index(model, bundle_dir, ctx.config.serving.ann)
    if ann.get("built"):
        ctx.log(
            f"publish: ANN index over {ann['n_items']} items, recall@10 {ann['recall@10']:.3f} against exact "
            f"search (ef_search {ann['ef_search']}), built in {ann['total_seconds']:.1f}s"
        )

    files = checked.preprocess.manifest.files
    id_maps_dir = None
    if Dataset.USER_IDS in files and Dataset.ITEM_IDS in files:
        id_maps_dir = checked.preprocess.download_dir(Dataset.ID_MAPS, tmp / Dataset.ID_MAPS)
        import pyarrow.parquet as pq

        n_users = pq.read_metadata(id_maps_dir / Dataset.USER_MAP).num_rows
        n_items = pq.read_metadata(id_maps_dir / Dataset.ITEM_MAP).num_rows
        if (model.n_users, model.n_items) != (n_users, n_items):
            raise ArtifactError(
                f"cannot publish candidate {candidate!r}: the bundle knows {model.n_users} users and "
                f"{model.n_items} items but {checked.preprocess.uri} maps {n_users} users and {n_items} items; "
                "it was trained on other data: re-run train, evaluate and gate on this preprocess artifact"
            )
    else:
        ctx.log(f"publish: {checked.preprocess.uri} has no {Dataset.ID_MAPS}/; the version will hold ids only")
    items_file = None
    if Dataset.ITEMS in files:
        items_file = tmp / Dataset.ITEMS
        with checked.preprocess.path(Dataset.ITEMS) as p:
            items_file.write_bytes(p.read_bytes())

    primary_name, primary_value = _primary(checked)
    lineage = {
        "gate": checked.gate.uri,
        "evaluate": checked.evaluate.uri,
        "train": checked.train.uri,
        "preprocess": checked.preprocess.uri,
    }
    for parent in checked.preprocess.manifest.parents:
        lineage.setdefault(parent.rstrip("/").rsplit("/", 1)[-1], parent)
    return VersionSource(
        bundle_dir=bundle_dir,
        candidate=candidate,
        model_type=checked.model_type,
        run_id=ctx.run_id,
        id_maps_dir=id_maps_dir,
        items_file=items_file,
        config=ctx.config,
        metrics=checked.metrics,
        blessing=checked.blessing,
        lineage=lineage,
        split_fingerprint=checked.split_fingerprint,
        primary_metric=primary_name,
        primary_value=primary_value,
    )


def _primary(checked: CheckedBlessing) -> tuple[str | None, float | None]:
    """The primary metric's name and the candidate's value, from the blessing (or metrics.json)."""
    b = checked.blessing
    raw = b.get("primary_metric", b.get("primary"))
    name: str | None = None
    value: Any = None
    if isinstance(raw, dict):
        name = raw.get("name") or raw.get("metric")
        value = raw.get("value")
    elif isinstance(raw, str):
        name = raw
        value = b.get("primary_value")
    if name and value is None:
        for t in b.get("thresholds") or []:
            if isinstance(t, dict) and t.get("metric") == name and t.get("value") is not None:
                value = t["value"]
                break
    if name and value is None:
        cand = (checked.metrics.get("candidates") or {}).get(checked.candidate) or {}
        entry = (cand.get("metrics") or cand).get(name) if isinstance(cand, dict) else None
        value = entry.get("value") if isinstance(entry, dict) else entry
    try:
        number = float(value) if value is not None else None
    except (TypeError, ValueError):
        number = None
    return name, number if number is None or math.isfinite(number) else None


def _reason(checked: CheckedBlessing) -> str:
    name, value = _primary(checked)
    score = f", {name}={value:.4g}" if name and value is not None else ""
    return f"blessed by {checked.gate.uri} ({checked.candidate}{score})"
