"""The HTML evaluation report: self-contained, complete, escaped and reproducible."""

from __future__ import annotations

import copy
import re

import pytest

from recloop.artifacts import Artifact
from recloop.evaluation.report import render_report
from recloop.steps.base import run_step
from support.eval_helpers import register_champion, registered_test_models, setup_run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """metrics.json of a run with two candidates and a champion (computed once for this module)."""
    tmp = tmp_path_factory.mktemp("report")
    with registered_test_models():
        ctx, _ = setup_run(tmp, {"oracle": "oracle", "second": "second", "random": "random"})
        register_champion(ctx.store, tmp)
        run_step("evaluate", ctx)
        art = Artifact.open(ctx.store, "runs/r1/evaluate")
        return {"doc": art.read_json("metrics.json"), "html": art.read_bytes("report.html").decode()}


def test_report_is_self_contained(evaluated: dict) -> None:
    page = evaluated["html"]
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "<link" not in page and "@import" not in page
    # Nothing is fetched: no src attributes, no http(s) hrefs or url() (SVG namespaces are not fetches).
    assert not re.search(r"\bsrc\s*=", page)
    assert not re.search(r"href\s*=\s*['\"]https?:", page)
    assert not re.search(r"url\(\s*['\"]?https?:", page)


def test_report_has_every_section_and_chart(evaluated: dict) -> None:
    page, doc = evaluated["html"], evaluated["doc"]
    for heading in (
        "Summary",
        "Accuracy",
        f"Candidates vs production champion v{doc['champion']['version']}",
        "By segment",
        "Beyond accuracy",
        "Protocol",
    ):
        assert f"<h2>{heading}</h2>" in page, heading
    # Accuracy bars, forest plot, segment bars, popularity curve, coverage bars.
    assert page.count("<svg") == 5
    assert "Best candidate: <b>oracle</b> with NDCG@5 = <b>1.0000</b>" in page
    assert doc["split_fingerprint"] in page
    for name in ("oracle", "second", "random", "champion v1"):
        assert name in page
    # The metric table shows values with their CI: `second` has mrr@5 = 0.5 for every user.
    assert '0.5000<span class="ci">[0.5000, 0.5000]</span>' in page


def test_svg_ids_are_unique_across_charts_and_rendering_is_reproducible(evaluated: dict) -> None:
    page = evaluated["html"]
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert ids and len(ids) == len(set(ids))
    assert render_report(evaluated["doc"]) == page


def test_text_from_the_document_is_escaped(evaluated: dict) -> None:
    doc = copy.deepcopy(evaluated["doc"])
    doc["model_name"] = "<script>alert(1)</script>"
    doc["champion"] = {"version": 2, "error": "bundle <corrupt> & unreadable"}
    page = render_report(doc)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "bundle &lt;corrupt&gt; &amp; unreadable" in page
    assert "could not be evaluated" in page and "Candidates vs production champion" not in page


def test_report_without_champion_or_bootstrap(evaluated: dict) -> None:
    doc = copy.deepcopy(evaluated["doc"])
    doc["champion"] = None
    for block in doc["candidates"].values():
        block["vs_champion"] = None
        for entry in block["metrics"].values():
            entry["ci_low"] = entry["ci_high"] = None
    page = render_report(doc)
    assert "No production champion yet" in page
    assert page.count("<svg") == 4  # no forest plot
    assert 'class="ci"' not in page
