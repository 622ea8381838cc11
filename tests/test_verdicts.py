"""Every verdict word from a real case: rows whose per-image matches come from real pycocotools
evaluations of constructed predictions on the same images, judged through the report's own path
(result files with their matches beside them -> gather -> table view -> paired bootstrap -> verdict)."""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from bench import matches as M
from bench.recipes import Catalogue
from bench.report.frame import build_table_view, gather
from bench.results import Measurement, Result, result_path, write_result
from bench.vocab import Verdict
from tests.test_matches import coco, evaluate, ground_truth, predict

REPO = Path(__file__).resolve().parent.parent
BASE_AP = 30.0  # the baseline's published box AP (invented for the test table)


def _result(root: Path, row: str, m: M.Matches, seed: int = 0) -> None:
    path = result_path(root, "paper", "pipeline-test/table-9", row)
    rec = M.save(M.matches_path(path), {"bbox": m})
    res = Result(status="done", table="pipeline-test/table-9", row=row, label=row, run_key=f"fixture-{row}",
                 config_hash="fixture", measured={"box_AP": round(M.ap_from_matches(m), 1)},
                 measurement=Measurement(scale="paper", dataset="test fixture (constructed predictions)",
                                         eval_split="val2017", batch_size=16, gpus=8, pretrained=True, seed=seed,
                                         device="test fixture"),
                 finished_at="2026-01-01T10:00:00+00:00", matches=rec)
    write_result(path, res)


@pytest.fixture(scope="module")
def evaluated():
    images, anns = ground_truth(200, seed=21)
    gt = coco(images, anns)
    ev = lambda seed, jitter: evaluate(gt, predict(images, anns, seed=seed, jitter=jitter))[1]  # noqa: E731
    return {"base": ev(30, 4.0), "better": ev(31, 1.5), "same": ev(32, 4.0), "worse": ev(33, 7.0)}


def test_each_verdict_word_from_real_evaluations(tmp_path, evaluated):
    e = evaluated
    # the measured intervals, first: the paper's Δ of each row is then set where each word must follow
    pb_better = M.paired_bootstrap([e["better"]], [e["base"]])
    pb_same = M.paired_bootstrap([e["same"]], [e["base"]])
    assert pb_better.lo > 0 and pb_same.lo < 0 < pb_same.hi
    rows = {  # row id: (its matches, the paper's Δ to the baseline, the verdict that must follow)
        "held": (e["better"], round(pb_better.delta, 1), Verdict.HELD),
        "held-smaller": (e["better"], round(pb_better.hi + 5, 1), Verdict.HELD_SMALLER),
        "not-reproduced": (e["same"], round(pb_same.hi + 5, 1), Verdict.NOT_REPRODUCED),
        "reversed": (e["worse"], 3.0, Verdict.REVERSED),
        "inconclusive": (e["same"], round(pb_same.hi / 2, 1) or 0.1, Verdict.INCONCLUSIVE),
    }
    recipes = tmp_path / "recipes" / "pipeline-test"
    recipes.mkdir(parents=True)
    shutil.copy(REPO / "tests/data/recipes/pipeline-test/_paper.yaml", recipes / "_paper.yaml")
    body = textwrap.dedent(f"""\
        include: _paper.yaml
        table: table-9
        number: "9"
        title: Verdict cases
        columns: [{{key: box_AP, label: box AP}}]
        rows:
          - {{id: base, label: base, position: 1, published: {{box_AP: {BASE_AP}}}}}
        """)
    for i, (rid, (_, delta, _)) in enumerate(rows.items(), start=2):
        body += (f"  - {{id: {rid}, label: {rid}, position: {i}, baseline: base, "
                 f"published: {{box_AP: {round(BASE_AP + delta, 1)}}}}}\n")
    (recipes / "table-9.yaml").write_text(body)
    results = tmp_path / "results"
    _result(results, "base", e["base"])
    for rid, (m, _, _) in rows.items():
        _result(results, rid, m)
    cat = Catalogue(tmp_path / "recipes")
    table = cat.load("pipeline-test/table-9")
    view = build_table_view(table, gather([table], "paper", results), cat)
    got = {c.row.row.id: c for c in view.claims}
    for rid, (_, _, want) in rows.items():
        m = got[rid].metrics[0]
        assert m.verdict is want, (rid, m)
        assert "paired bootstrap over 200 images (1000 resamples)" in m.noise_source
        assert m.lo <= m.measured_delta <= m.hi and m.mde > 0
    assert "MDE" in got["inconclusive"].metrics[0].reason
    # a second view reads the bootstrap from the cache (keyed by the matches files' hashes)
    again = build_table_view(table, gather([table], "paper", results), cat)
    assert [c.metrics[0].lo for c in again.claims] == [c.metrics[0].lo for c in view.claims]


def test_a_tampered_matches_file_falls_back_to_the_tolerance_interval(tmp_path, evaluated):
    results = tmp_path / "results"
    _result(results, "base", evaluated["base"])
    _result(results, "held", evaluated["better"])
    M.matches_path(result_path(results, "paper", "pipeline-test/table-9", "held")).write_bytes(b"not a matches file")
    recipes = tmp_path / "recipes" / "pipeline-test"
    recipes.mkdir(parents=True)
    shutil.copy(REPO / "tests/data/recipes/pipeline-test/_paper.yaml", recipes / "_paper.yaml")
    (recipes / "table-9.yaml").write_text(textwrap.dedent("""\
        include: _paper.yaml
        table: table-9
        number: "9"
        title: Verdict cases
        columns: [{key: box_AP, label: box AP}]
        rows:
          - {id: base, label: base, position: 1, published: {box_AP: 30.0}}
          - {id: held, label: held, position: 2, baseline: base, published: {box_AP: 40.0}}
        """))
    cat = Catalogue(tmp_path / "recipes")
    table = cat.load("pipeline-test/table-9")
    m = build_table_view(table, gather([table], "paper", results), cat).claims[0].metrics[0]
    assert "SHA-256" in m.noise_source and "tolerance" in m.noise_source and m.mde is None
    assert m.hi - m.lo == pytest.approx(1.0)  # measured Δ ± the 0.5 AP tolerance
