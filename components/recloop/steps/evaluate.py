"""Evaluate step: every trained candidate and the production champion, on the same leakage-free split.

Inputs: the preprocess artifact (splits, id maps, item categories) and the train folder (one
`TrainedModel` artifact per candidate of this run). Output `runs/{run}/evaluate/`:
  metrics.json     split fingerprint, protocol, cut-offs, and per model: metrics with 95 % bootstrap CIs,
                   segments (history length, head/tail targets), popularity curve; per candidate a paired
                   bootstrap comparison with the champion (`vs_champion`); the champion's own block
  per_user.parquet per-user metric values of every model (for drill-down and custom tests)
  report.html      a self-contained report for people (inline SVG charts, no external assets)

The champion (production version of `publish.model_name` in the registry) is re-evaluated here on this
split, through both runs' id maps, so the gate compares like with like. A champion that cannot be loaded
is recorded with its error (the gate then refuses relative thresholds) instead of failing the step.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recloop.artifacts import Artifact, Manifest
from recloop.artifacts.kinds import Dataset, Evaluation, TuningStudy
from recloop.errors import ArtifactError, ConfigError
from recloop.steps.base import StepContext

if TYPE_CHECKING:
    import pandas as pd

    from recloop.config import EvaluationConfig
    from recloop.evaluation.evaluator import EvalSetup, ModelResult
    from recloop.evaluation.protocols import SplitData
    from recloop.models.base import Recommender

METRICS_SCHEMA_VERSION = 1


def run(ctx: StepContext, inputs: dict[str, str], output: str) -> Manifest:
    from recloop.evaluation.evaluator import compare, evaluate_scores, make_setup, result_json
    from recloop.evaluation.protocols import build_queries, load_split, model_scorer, with_sampled_negatives
    from recloop.evaluation.report import render_report

    cfg = ctx.config.evaluation
    preprocess = ctx.open(inputs["preprocess"])
    trained = {name: ctx.open(uri) for name, uri in ctx.candidate_uris(inputs["train"]).items()}
    data = load_split(preprocess)
    queries = build_queries(data, cfg.split, exclude_seen=True)
    cold_mask = cold_start_mask(preprocess, data, cfg)
    if cfg.sampled_negatives:
        queries = with_sampled_negatives(queries, cfg.sampled_negatives, cfg.seed)
    if len(queries) == 0:
        raise ArtifactError(
            f"no user in the {cfg.split} split of {preprocess.uri} has a target left to evaluate "
            f"({queries.stats}); check preprocess.split and the data"
        )
    setup = make_setup(data, queries, cfg.k, cfg.bootstrap, cfg.seed, cold_mask, user_groups(preprocess, data.n_users))
    fingerprint = queries.fingerprint()
    names = list(trained)
    ctx.log(
        f"evaluate: {len(names)} candidate(s) on {len(queries)} {cfg.split} users, {data.n_items} items, "
        f"{queries.protocol} ranking, k={list(setup.ks)}"
    )
    advance = ctx.progress("evaluate", total=len(names) + 1)

    results: dict[str, ModelResult] = {}
    blocks: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="recloop-evaluate-") as tmp:
        for name in names:
            model = load_candidate(trained[name], name, Path(tmp) / "candidates" / name, data)
            info = {"type": model.type_name, "bundle_uri": trained[name].uri, "train": trained[name].manifest.summary}
            importances = getattr(model, "feature_importances", None)  # learned rankers offer it
            if callable(importances) and importances():
                info["feature_importances"] = importances()
            result = evaluate_scores(setup, name, model_scorer(model), info=info)
            results[name] = result
            blocks[name] = result_json(setup, result)
            ctx.log(
                f"evaluate: {name}: {cfg.primary} = {_fmt(blocks[name]['metrics'].get(cfg.primary))} "
                f"({result.seconds:.1f}s)"
            )
            advance(1)
        champion_result, champion_block = evaluate_champion(ctx, setup, data, Path(tmp) / "champion")
        advance(1)

    for name, result in results.items():
        blocks[name]["vs_champion"] = compare(setup, result, champion_result) if champion_result else None
    ranking = sorted(names, key=lambda n: _sort_key(blocks[n], cfg.primary), reverse=True)
    doc: dict[str, Any] = {
        "schema_version": METRICS_SCHEMA_VERSION,
        "run_id": ctx.run_id,
        "model_name": ctx.config.model_name,
        "split": cfg.split,
        "split_fingerprint": fingerprint,
        "k": list(setup.ks),
        "primary": cfg.primary,
        "preprocess_uri": preprocess.uri,
        "train_uri": inputs["train"],
        "protocol": setup.protocol_json(),
        "candidates": blocks,
        "ranking": ranking,
        "best_candidate": ranking[0] if ranking else None,
        "champion": champion_block,
        "tuning": tuning_summary(ctx, inputs.get("tune"), names),
    }
    per_user = per_user_frame(setup, results, champion_result)
    # The report is rendered from exactly what metrics.json will hold, so it can be re-rendered from it.
    doc = json.loads(json.dumps(doc, sort_keys=True, default=str))

    with ctx.writer(output, parents=[preprocess.uri, *(t.uri for t in trained.values())]) as writer:
        writer.put_json(Evaluation.METRICS, doc)
        writer.put_parquet(Evaluation.PER_USER, per_user)
        writer.put_bytes(Evaluation.REPORT, render_report(doc).encode("utf-8"))
        writer.summary.update(
            {
                "split": cfg.split,
                "split_fingerprint": fingerprint,
                "primary": cfg.primary,
                "users": len(queries),
                "candidates": {n: _value(blocks[n], cfg.primary) for n in names},
                "best_candidate": doc["best_candidate"],
                "champion_version": champion_block.get("version") if champion_block else None,
                "champion_primary": _value(champion_block, cfg.primary) if champion_block else None,
            }
        )
    return writer.manifest


# ---------------------------------------------------------------------------------------------- candidates


def load_candidate(trained: Artifact, name: str, dest: Path, data: SplitData) -> Recommender:
    """Download (hash-verified) and load one candidate; it must be trained on this preprocess artifact."""
    from recloop.models.base import Recommender

    bundle = trained.download_all(dest)
    try:
        model = Recommender.load(bundle)
    except ArtifactError as exc:
        raise ArtifactError(f"candidate {name!r} in {trained.uri} cannot be loaded: {exc}") from None
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"candidate {name!r} in {trained.uri} cannot be loaded ({exc}); re-run train") from None
    if (model.n_users, model.n_items) != (data.n_users, data.n_items):
        raise ArtifactError(
            f"candidate {name!r} knows {model.n_users} users and {model.n_items} items but "
            f"{data.uri} maps {data.n_users} users and {data.n_items} items: it was trained on "
            "another preprocess artifact; re-run train on this one"
        )
    return model


# ---------------------------------------------------------------------------------------------- champion


def user_groups(preprocess: Artifact, n_users: int) -> dict[str, Any]:
    """Categorical user attributes (the users module's) by user_idx, for per-attribute segments."""
    import numpy as np

    frame = Dataset(preprocess).users()
    types = preprocess.manifest.summary.get("user_attribute_types") or {}
    groups: dict[str, Any] = {}
    if frame is None:
        return groups
    index = frame["user_idx"].to_numpy(np.int64)
    for name, kind in types.items():
        if kind == "categorical" and name in frame.columns:
            values = np.full(n_users, None, dtype=object)
            values[index] = [v if isinstance(v, str) else None for v in frame[name].astype(object).tolist()]
            groups[name] = values
    return groups


def evaluate_champion(
    ctx: StepContext, setup: EvalSetup, data: SplitData, workdir: Path
) -> tuple[ModelResult | None, dict[str, Any] | None]:
    """The registry's production model measured on this split: (result, metrics.json block).

    (None, None) when no version was ever promoted; (None, {version, error}) when one exists but cannot be
    evaluated (corrupt bundle, no id maps) so the gate can say so. Store outages propagate (retry the step).
    """
    from recloop.evaluation.champion import RemappedScorer, read_id_maps
    from recloop.evaluation.evaluator import evaluate_scores, result_json
    from recloop.models.base import Recommender
    from recloop.registry import ModelRegistry

    registry = ModelRegistry(ctx.store, ctx.config.model_name)
    try:
        alias = registry.production()
    except ArtifactError as exc:
        ctx.log(f"evaluate: WARNING the production alias cannot be read: {exc}")
        return None, {"version": None, "uri": registry.uri, "error": str(exc)}
    if alias is None:
        ctx.log(f"evaluate: model {registry.name!r} has no production version yet; no champion to compare with")
        return None, None
    block: dict[str, Any] = {"version": alias.version, "uri": alias.uri}
    try:
        bundle = registry.champion_bundle(workdir)
        if bundle is None:  # demoted between the two reads
            return None, None
        block.update(
            {
                "version": bundle.version,
                "uri": bundle.info.uri,
                "candidate": bundle.info.candidate,
                "type": bundle.info.model_type,
                "run_id": bundle.info.run_id,
            }
        )
        if bundle.id_maps_dir is None:
            raise ArtifactError(
                f"version v{bundle.version} has no id maps, so its ids cannot be matched to this "
                "split's; re-publish it or promote a version that has them"
            )
        model = Recommender.load(bundle.path)
        user_ids, item_ids = read_id_maps(bundle.id_maps_dir)
        scorer = RemappedScorer.build(model, user_ids, item_ids, data.user_ids, data.item_ids)
    except (ArtifactError, KeyError, ValueError) as exc:
        message = str(exc).strip("'\"")
        ctx.log(f"evaluate: WARNING champion v{block['version']} cannot be evaluated: {message}")
        block["error"] = message
        return None, block
    result = evaluate_scores(setup, f"champion v{bundle.version}", scorer)
    block.update(
        {
            "known_users": scorer.known_users,
            "known_items": scorer.known_items,
            "split_users": data.n_users,
            "split_items": data.n_items,
        }
    )
    block.update(result_json(setup, result))
    ctx.log(
        f"evaluate: champion v{bundle.version} ({block['type']}): {ctx.config.evaluation.primary} = "
        f"{_fmt(block['metrics'].get(ctx.config.evaluation.primary))}; knows {scorer.known_items} of "
        f"{data.n_items} items"
    )
    return result, block


# ---------------------------------------------------------------------------------------------- helpers


def cold_start_mask(preprocess: Artifact, data: SplitData, cfg: EvaluationConfig) -> np.ndarray | None:
    """Items preprocess held out of training entirely (`evaluation.cold_start`), or None.

    The lists stay full-ranking over all items; the mask only defines the 'cold-start items' segment,
    whose targets are interactions with those items. ID-only models rank such items last (score 0 there).
    """
    if cfg.cold_start.item_share <= 0:
        return None
    idx = Dataset(preprocess).cold_items()
    if idx is None:
        raise ConfigError(
            "evaluation.cold_start",
            [
                f"evaluation.cold_start.item_share: {preprocess.uri} was made without a cold-start hold-out; "
                "re-run preprocess with this config (e.g. `recloop step preprocess --force`)"
            ],
        )
    mask = np.zeros(data.n_items, dtype=bool)
    mask[idx] = True
    return mask


def per_user_frame(setup: EvalSetup, results: dict[str, ModelResult], champion: ModelResult | None) -> pd.DataFrame:
    import pandas as pd

    q = setup.queries
    columns: dict[str, Any] = {
        "user_idx": q.users.astype(np.int32),
        "user_id": q.user_ids[q.users] if q.user_ids is not None else q.users.astype(str),
        "history_length": q.history_lengths().astype(np.int32),
        "n_targets": q.targets.counts().astype(np.int32),
    }
    models = [(f"candidate/{n}", r) for n, r in results.items()]
    if champion is not None:
        models.append(("champion", champion))
    for prefix, result in models:
        for metric, values in result.per_user.items():
            columns[f"{prefix}/{metric}"] = values
    return pd.DataFrame(columns)


def _value(block: dict[str, Any] | None, metric: str) -> float | None:
    if not block:
        return None
    entry = (block.get("metrics") or {}).get(metric)
    return entry.get("value") if isinstance(entry, dict) else None


def _sort_key(block: dict[str, Any], metric: str) -> float:
    value = _value(block, metric)
    return float("-inf") if value is None else value


def _fmt(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    if entry.get("ci_low") is None:
        return f"{entry['value']:.4f}"
    return f"{entry['value']:.4f} [{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]"


def tuning_summary(ctx: StepContext, tune_folder: str | None, names: list[str]) -> dict[str, Any]:
    """Per tuned candidate: the study's headline facts and its trials' values, for the report's plots."""
    if tune_folder is None:
        return {}
    summary: dict[str, Any] = {}
    for name, uri in ctx.candidate_uris(tune_folder).items():
        study = TuningStudy(ctx.open(uri))
        record = study.study()
        if name not in names or not record.get("tuned"):
            continue
        trials = study.trials()
        summary[name] = {
            **{k: record.get(k) for k in ("best_value", "best_params", "best_trial", "budget", "seconds", "states")},
            "importances": record.get("importances") or {},
            "trials": [
                [int(number), _trial_value(float(value), str(curve)), str(state)]
                for number, value, curve, state in zip(
                    trials["number"], trials["value"], trials["curve"], trials["state"]
                )
            ],
        }
    return summary


def _trial_value(value: float, curve: str) -> float | None:
    """A trial's score; a pruned or stopped one (no value) is shown at its last validation check."""
    if value == value:  # not NaN
        return float(value)
    points = json.loads(curve or "[]")
    return float(points[-1][1]) if points else None
