"""`bench run --evaluator`: a real smoke job records the COCO evaluator it used (name, version, what it
was cross-checked against) and still keeps its per-image matches; the run key does not depend on the
evaluator (only one verified identical to pycocotools may serve a job); a refused one stops the run."""
from __future__ import annotations

import re

from bench import evaluators as E
from bench import matches as M
from bench.results import read_result
from tests.cli.test_run import _bench
from tests.conftest import TINY_SCALE


def test_a_real_smoke_job_records_its_evaluator_and_keeps_its_matches(pipeline_run):
    results, _, proc = pipeline_run
    chosen = E.resolve("auto")  # the process ran with the same environment and cache
    assert f"evaluator: {chosen.label}" in proc.stdout
    path = results / "smoke" / "pipeline-test" / "table-1" / "tiny.json"
    res = read_result(path)
    assert res.status == "done" and res.measurement.evaluator == chosen.label
    assert re.search(r"\d+\.\d+", res.measurement.evaluator)  # its version
    if chosen.name != E.REFERENCE:
        assert "cross-checked against pycocotools" in res.measurement.evaluator
    groups = M.load(M.matches_path(path), res.matches["sha256"])
    assert set(groups) == {"segm", "bbox"} and res.matches["images"] == res.measurement.eval_images


def _run_key(out: str) -> str:
    line = next(ln for ln in out.splitlines() if "tiny " in ln and " run " in ln)
    return re.search(r"\b[0-9a-f]{12}\b", line).group(0)


def test_the_run_key_does_not_depend_on_the_evaluator_and_a_refused_one_stops_the_run(tmp_path):
    keys = {}
    for name in ("pycocotools", "auto"):
        p = _bench(tmp_path / "r", tmp_path / "d", "run", "pipeline-test/table-1", "tiny", "--scale", str(TINY_SCALE),
                   "--dry-run", "--evaluator", name)
        assert p.returncode == 0, p.stdout + p.stderr
        keys[name] = _run_key(p.stdout)
    assert keys["pycocotools"] == keys["auto"]
    if E.version("faster-coco-eval") is not None:
        p = _bench(tmp_path / "r", tmp_path / "d", "run", "pipeline-test/table-1", "tiny", "--scale", str(TINY_SCALE),
                   "--evaluator", "faster-coco-eval")
        assert p.returncode != 0 and "refused" in p.stdout + p.stderr and "no per-image matches" in p.stdout + p.stderr
        assert not (tmp_path / "r").exists()
