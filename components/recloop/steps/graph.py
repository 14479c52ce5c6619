"""The step graph: every step, its typed inputs and its typed output, declared once.

Modelled on TFX's component specs (typed, optional channels) and KFP v2's `Input[...]`/`Output[...]`.
Everything else reads this declaration and restates nothing:
  - `run_step` resolves a step's inputs from the run layout and checks them (one check for all steps);
  - `recloop.pipeline.run_pipeline` runs `TRAINING` in order, in process;
  - the Airflow factory draws the training DAG from `TRAINING.task_upstreams()` (the loop itself, without
    the edges implied by others) and maps each group of `per_candidate` steps over the configured
    candidates as a whole (`mapped_groups`);
  - `recloop step NAME --help` and the Airflow task docs describe inputs and outputs from it.

An input's role is the name of the step whose output it reads (`inputs={"preprocess": Input(Dataset)}`).
A `per_candidate` step runs once per candidate model and commits `runs/{run}/{step}/{candidate}/`;
an input from such a step (`many=True`) is the folder holding one artifact per selected candidate.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from recloop.artifacts.kinds import (
    ArtifactKind,
    Blessing,
    Dataset,
    Evaluation,
    FeedbackBatch,
    Publication,
    RawEvents,
    TrainedModel,
    TuningStudy,
    ValidationReport,
)

if TYPE_CHECKING:
    from recloop.artifacts import Manifest


@dataclass(frozen=True)
class Input:
    """A typed input channel: the artifact kind it carries, whether the step runs without it, whether
    it is one artifact per candidate (`many`), or, for a per-candidate step reading a per-candidate
    step, the same candidate's artifact (`same_candidate`: tune/{c} → train/{c})."""

    kind: type[ArtifactKind]
    optional: bool = False
    many: bool = False
    same_candidate: bool = False


@dataclass(frozen=True)
class Step:
    """One pipeline step: where its code is, what it reads and what it writes."""

    name: str
    module: str  # defines run(ctx, inputs, output) (+ candidate= for per_candidate steps)
    description: str
    output: type[ArtifactKind]
    inputs: Mapping[str, Input] = field(default_factory=dict)
    per_candidate: bool = False  # one task/artifact per candidate model
    group: str | None = None  # the Airflow TaskGroup it is drawn in
    notes: str = ""  # what an operator should know beyond inputs and outputs (task docs, --help)

    @property
    def reads_candidates(self) -> bool:
        """Whether the run's candidate selection decides what this step reads or does."""
        return self.per_candidate or any(i.many for i in self.inputs.values())

    def load(self) -> Callable[..., Manifest]:
        """The step's `run` function (its module is imported only now: parse time stays cheap)."""
        return importlib.import_module(self.module).run

    def summary(self) -> str:
        return self.description.strip().split("\n", 1)[0]

    def describe_inputs(self) -> str:
        if not self.inputs:
            return "none (reads the configured data sources)"
        parts = []
        for role, i in self.inputs.items():
            what = (
                f"one {i.kind.title} per candidate"
                if i.many
                else f"this candidate's {i.kind.title}"
                if i.same_candidate
                else i.kind.title
            )
            parts.append(f"{role} ({what}{', optional' if i.optional else ''})")
        return ", ".join(parts)

    def doc(self) -> str:
        """Markdown for the Airflow task doc and the CLI help: description, inputs, output, notes."""
        parts = [
            self.description.strip(),
            f"**Reads:** {self.describe_inputs()}.",
            f"**Writes** {self.describe_output()}.",
        ]
        return "\n\n".join(parts + ([self.notes.strip()] if self.notes else []))

    def describe_output(self) -> str:
        where = f"runs/{{run_id}}/{self.name}/" + ("{candidate}/" if self.per_candidate else "")
        return f"{where}: {self.output.title}, {self.output.describe_files()}"


@dataclass(frozen=True)
class StepGraph:
    """Steps in a valid run order; each input names an earlier step of the same graph."""

    steps: tuple[Step, ...]
    groups: Mapping[str, str] = field(default_factory=dict)  # group -> tooltip

    def __post_init__(self) -> None:
        seen: dict[str, Step] = {}
        for step in self.steps:
            for role, i in step.inputs.items():
                upstream = seen.get(role)
                if upstream is None:
                    raise ValueError(f"step {step.name!r} reads {role!r}, which is not an earlier step")
                pairing_ok = (
                    upstream.per_candidate and step.per_candidate and not i.many
                    if i.same_candidate
                    else upstream.per_candidate == i.many
                )
                if upstream.output is not i.kind or not pairing_ok:
                    raise ValueError(
                        f"step {step.name!r} reads {role!r} as {i.kind.__name__}"
                        f"{' (many)' if i.many else ''}, but {role!r} writes "
                        f"{upstream.output.__name__}{' per candidate' if upstream.per_candidate else ''}"
                    )
            seen[step.name] = step
        for group in {s.group for s in self.steps if s.group}:
            kinds = {s.per_candidate for s in self.steps if s.group == group}
            if len(kinds) > 1:
                raise ValueError(
                    f"group {group!r} mixes per-candidate and run-wide steps; a group is mapped over the "
                    "candidates as a whole (each candidate's steps one after the other), so it holds only one kind"
                )

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __contains__(self, name: object) -> bool:
        return any(s.name == name for s in self.steps)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    def __getitem__(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"unknown step {name!r}; steps: {', '.join(self.names)}")

    def mapped_groups(self) -> tuple[str, ...]:
        """Groups of per-candidate steps: drawn as one mapped task group per candidate, so a candidate's
        later step (train) waits only for its own earlier one (tune), not for every candidate's."""
        return tuple(g for g in self.groups if any(s.per_candidate for s in self.steps if s.group == g))

    def task_upstreams(self) -> dict[str, tuple[str, ...]]:
        """Each step's direct upstream steps, minus those already upstream of another of them (the
        transitive reduction): the DAG draws the loop, and data still flows along every declared input."""
        reach: dict[str, set[str]] = {}
        reduced: dict[str, tuple[str, ...]] = {}
        for step in self.steps:
            direct = set(step.inputs)
            implied = set().union(*(reach[d] for d in direct)) if direct else set()
            reduced[step.name] = tuple(d for d in self.names if d in direct - implied)
            reach[step.name] = direct | implied
        return reduced


TRAINING = StepGraph(
    steps=(
        Step(
            "ingest",
            "recloop.steps.ingest",
            group="data",
            output=RawEvents,
            notes=(
                "Honours the `since` watermark; the manifest summary holds `max_timestamp`, the next incremental "
                "run's watermark."
            ),
            description=(
                "Read raw interaction events (and the item catalog, tags and users, if configured) from local files "
                "or S3 into recloop's Parquet tables; unparseable rows are kept and flagged for validation."
            ),
        ),
        Step(
            "validate",
            "recloop.steps.validate",
            group="data",
            output=ValidationReport,
            inputs={"ingest": Input(RawEvents)},
            notes=(
                "With `validation.on_failure: fail` a failed check fails the task (the report goes to "
                "`runs/{run}/validate-failed/`): fix the data or the thresholds, then clear it."
            ),
            description=(
                "Check ingested interactions with a great-expectations suite; fail, quarantine bad rows, or warn."
            ),
        ),
        Step(
            "preprocess",
            "recloop.steps.preprocess",
            group="data",
            output=Dataset,
            inputs={"ingest": Input(RawEvents), "validate": Input(ValidationReport, optional=True)},
            notes=(
                "Reads validate's valid rows when it quarantined some, else ingest's rows; without a validate "
                "artifact (validation skipped) it reads ingest's rows and logs so."
            ),
            description=(
                "Implicit feedback, dedupe, min-count / k-core filters, contiguous ids and time-based splits."
            ),
        ),
        Step(
            "tune",
            "recloop.steps.tune",
            group="model",
            output=TuningStudy,
            per_candidate=True,
            inputs={"preprocess": Input(Dataset)},
            notes=(
                "Without `tuning.budget`, or for a candidate not tuned, it commits at once and train uses the "
                "configured parameters. A rerun with the same run id resumes the study from its journal "
                "(or from `tuning.storage`)."
            ),
            description=(
                "Search one candidate's hyper-parameters with Optuna (TPE; pruning on the validation curve) on "
                "validation NDCG@10 within its share of `tuning.budget`; the test split is never read."
            ),
        ),
        Step(
            "train",
            "recloop.steps.train",
            group="model",
            output=TrainedModel,
            per_candidate=True,
            inputs={
                "preprocess": Input(Dataset),
                "tune": Input(TuningStudy, optional=True, same_candidate=True),
            },
            notes=(
                "Applies the candidate's tuned parameters over the configured ones (none without a tune "
                "artifact). A candidate not selected by the run's `models` param is skipped."
            ),
            description=(
                "Train one candidate model of `models:` on the preprocess splits and save its bundle; one task "
                "per candidate (retry one alone), or those chosen with --model."
            ),
        ),
        Step(
            "evaluate",
            "recloop.steps.evaluate",
            group="release",
            output=Evaluation,
            inputs={
                "preprocess": Input(Dataset),
                "tune": Input(TuningStudy, many=True, optional=True),
                "train": Input(TrainedModel, many=True),
            },
            description=(
                "Rank the held-out users with every candidate and the production champion; metrics with "
                "bootstrap CIs, segments and beyond-accuracy measures to "
                f"{Evaluation.METRICS} and {Evaluation.REPORT}."
            ),
        ),
        Step(
            "gate",
            "recloop.steps.gate",
            group="release",
            output=Blessing,
            inputs={"evaluate": Input(Evaluation)},
            description=(
                "Judge every candidate against the gate thresholds (absolute, relative to the champion, "
                "significance) and bless the best one that passes, or reject with reasons."
            ),
        ),
        Step(
            "publish",
            "recloop.steps.publish",
            group="release",
            output=Publication,
            inputs={
                "preprocess": Input(Dataset),
                "train": Input(TrainedModel, many=True),
                "evaluate": Input(Evaluation),
                "gate": Input(Blessing),
            },
            notes=(
                "Registers the blessed bundle as `models/{name}/v{N}/` and moves the `production` alias "
                "(compare-and-swap). In the DAG it runs only when `decide` let it (blessed, not a dry run). "
                "Retrying is safe: the alias moves at most once per version."
            ),
            description=(
                "Check the blessing, register the blessed candidate as a new model version and move the "
                "production alias."
            ),
        ),
    ),
    groups={
        "data": "Read raw events, check them, and split them into train/valid/test",
        "model": "Tune and train one candidate model (one mapped instance per candidate: its train follows its own tune)",
        "release": "Evaluate every candidate and the production champion on the same split, gate the best one on "
        "thresholds and publish it as the production model",
    },
)

# Runs on its own schedule (the feedback DAG), outside the training order.
FEEDBACK = StepGraph(
    steps=(
        Step(
            "feedback",
            "recloop.steps.feedback",
            output=FeedbackBatch,
            description=(
                "Join served slates with feedback events into labelled interactions and bandit logs, quarantine abuse, "
                "append clean interactions for the next ingest, and train the bandit policy (policy.enabled)."
            ),
        ),
    )
)


def find_step(name: str) -> Step:
    """A step of either graph by name; KeyError names every step."""
    for graph in (TRAINING, FEEDBACK):
        if name in graph:
            return graph[name]
    raise KeyError(f"unknown step {name!r}; steps: {', '.join((*TRAINING.names, *FEEDBACK.names))}")
