"""The step graph: one declaration of every step's typed inputs and output, and what is derived from it."""

from __future__ import annotations

from typing import Any

import pytest

from recloop.artifacts import Manifest
from recloop.artifacts.kinds import (
    ArtifactKind,
    Blessing,
    Dataset,
    Evaluation,
    RawEvents,
    TrainedModel,
    TuningStudy,
)
from recloop.errors import ArtifactError
from recloop.steps.base import StepContext, resolve_inputs, run_step
from recloop.steps.graph import FEEDBACK, TRAINING, Input, Step, StepGraph, find_step


def test_training_graph_declares_the_loop_in_order() -> None:
    assert TRAINING.names == ("ingest", "validate", "preprocess", "tune", "train", "evaluate", "gate", "publish")
    assert FEEDBACK.names == ("feedback",)
    assert {s.name: tuple(s.inputs) for s in TRAINING} == {
        "ingest": (),
        "validate": ("ingest",),
        "preprocess": ("ingest", "validate"),
        "tune": ("preprocess",),
        "train": ("preprocess", "tune"),
        "evaluate": ("preprocess", "tune", "train"),
        "gate": ("evaluate",),
        "publish": ("preprocess", "train", "evaluate", "gate"),
    }
    assert [s.name for s in TRAINING if s.per_candidate] == ["tune", "train"]
    assert TRAINING["evaluate"].inputs["train"] == Input(TrainedModel, many=True)
    assert TRAINING["train"].inputs["tune"] == Input(TuningStudy, optional=True, same_candidate=True)
    assert TRAINING["preprocess"].inputs["validate"].optional is True
    assert {s.name: s.group for s in TRAINING} == {
        "ingest": "data",
        "validate": "data",
        "preprocess": "data",
        "tune": "model",
        "train": "model",
        "evaluate": "release",
        "gate": "release",
        "publish": "release",
    }
    # The per-candidate steps form their own group, which the DAG maps over the candidates as a whole.
    assert TRAINING.mapped_groups() == ("model",)


def test_a_group_mixing_per_candidate_and_run_wide_steps_is_refused() -> None:
    a = Step("a", "m", "a", output=Dataset, group="g")
    b = Step("b", "m", "b", output=TrainedModel, inputs={"a": Input(Dataset)}, per_candidate=True, group="g")
    with pytest.raises(ValueError, match="group 'g' mixes per-candidate and run-wide steps"):
        StepGraph(steps=(a, b), groups={"g": "both kinds"})


def test_task_edges_are_the_transitive_reduction() -> None:
    assert TRAINING.task_upstreams() == {
        "ingest": (),
        "validate": ("ingest",),
        "preprocess": ("validate",),
        "tune": ("preprocess",),
        "train": ("tune",),
        "evaluate": ("train",),
        "gate": ("evaluate",),
        "publish": ("gate",),
    }
    # A diamond keeps both branches; only edges implied through another input are dropped.
    a = Step("a", "m", "a", output=RawEvents)
    b = Step("b", "m", "b", output=Dataset, inputs={"a": Input(RawEvents)})
    c = Step("c", "m", "c", output=Evaluation, inputs={"a": Input(RawEvents)})
    d = Step(
        "d", "m", "d", output=Blessing, inputs={"a": Input(RawEvents), "b": Input(Dataset), "c": Input(Evaluation)}
    )
    assert StepGraph((a, b, c, d)).task_upstreams() == {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}


def test_graph_refuses_inputs_that_do_not_match_their_upstream() -> None:
    a = Step("a", "m", "a", output=RawEvents)
    with pytest.raises(ValueError, match="step 'b' reads 'a' as Dataset, but 'a' writes RawEvents"):
        StepGraph((a, Step("b", "m", "b", output=Dataset, inputs={"a": Input(Dataset)})))
    with pytest.raises(ValueError, match="step 'b' reads 'z', which is not an earlier step"):
        StepGraph((a, Step("b", "m", "b", output=Dataset, inputs={"z": Input(RawEvents)})))
    with pytest.raises(ValueError, match=r"reads 'a' as RawEvents \(many\), but 'a' writes RawEvents$"):
        StepGraph((a, Step("b", "m", "b", output=Dataset, inputs={"a": Input(RawEvents, many=True)})))


def test_find_step_names_every_step_when_unknown() -> None:
    assert find_step("feedback") is FEEDBACK["feedback"]
    with pytest.raises(
        KeyError,
        match="unknown step 'nope'; steps: ingest, validate, preprocess, tune, train, evaluate, gate, publish, feedback",
    ):
        find_step("nope")


def test_every_declared_step_module_defines_run() -> None:
    for step in (*TRAINING, *FEEDBACK):
        assert callable(step.load()), step.name


# ------------------------------------------------------------------------------------------------ runner


class Probe(ArtifactKind):
    title = "probe"
    files = {"data.json": "what the probe wrote"}


CALLS: list[tuple[str, dict[str, str]]] = []


def _write(name: str) -> Any:
    def run(ctx: StepContext, inputs: dict[str, str], output: str) -> Manifest:
        CALLS.append((name, dict(inputs)))
        with ctx.writer(output) as w:
            w.put_json("data.json", {"step": name})
        return w.manifest

    return run


class _Module:
    def __init__(self, run: Any):
        self.run = run


SOURCE = Step("src", "recloop_test_graph_src", "writes", output=Probe)
EXTRA = Step("extra", "recloop_test_graph_extra", "writes", output=Probe)
SINK = Step(
    "sink",
    "recloop_test_graph_sink",
    "reads",
    output=Probe,
    inputs={"src": Input(Probe), "extra": Input(Probe, optional=True)},
)


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, str]]]:
    import sys

    for step in (SOURCE, EXTRA, SINK):
        monkeypatch.setitem(sys.modules, step.module, _Module(_write(step.name)))
    CALLS.clear()
    return CALLS


def _ctx(tmp_path: Any, log: list[str]) -> StepContext:
    from support.helpers import make_config

    return StepContext.from_config(make_config(tmp_path / "store"), "r1", log=log.append)


def test_an_optional_input_is_passed_when_committed_and_left_out_when_not(tmp_path: Any, probes: list) -> None:
    log: list[str] = []
    ctx = _ctx(tmp_path, log)
    run_step(SOURCE, ctx)
    run_step(SINK, ctx)
    assert probes[-1] == ("sink", {"src": ctx.store.uri("runs/r1/src")})
    assert (
        log[-1] == f"sink: optional input extra has no committed artifact at {ctx.store.uri('runs/r1/extra')}; "
        "running without it"
    )
    run_step(EXTRA, ctx)
    run_step(SINK, ctx)  # a new input appeared: recomputed, with it
    assert probes[-1] == ("sink", {"src": ctx.store.uri("runs/r1/src"), "extra": ctx.store.uri("runs/r1/extra")})


def test_a_missing_required_input_names_the_step_to_run(tmp_path: Any, probes: list) -> None:
    ctx = _ctx(tmp_path, [])
    with pytest.raises(ArtifactError) as err:
        run_step(SINK, ctx)
    assert str(err.value) == (
        f"sink cannot run: input 'src' (probe): {ctx.store.uri('runs/r1/src')} has no _MANIFEST.json: the step that "
        "writes it has not completed; run it first (`recloop step src` with this run id), or pass --input src=URI"
    )
    assert probes == []


def test_unknown_input_roles_are_refused(tmp_path: Any, probes: list) -> None:
    ctx = _ctx(tmp_path, [])
    with pytest.raises(ArtifactError, match="sink has no input 'nope'; its inputs: src, extra"):
        resolve_inputs(ctx, SINK, {"nope": "file:///x"})
