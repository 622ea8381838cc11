"""Run keys name what a run depends on: a different synthetic dataset in a folder of the same name
is a different run (it was keyed by the folder's basename)."""
from __future__ import annotations

from bench.data import synth
from bench.plan import make_plan, synth_spec, Scale
from bench.recipes import Catalogue
from tests.conftest import TEST_RECIPES, TINY_SCALE


def _key(data_root, results):
    t = Catalogue(TEST_RECIPES).load("pipeline-test/table-1")
    plan = make_plan([(t, [t.row("tiny")])], str(TINY_SCALE), results, data_root=data_root)
    return next(pr.run_key for pr in plan.rows if pr.row.id == "tiny")


def test_smoke_run_key_follows_the_dataset_content_not_the_folder_name(tmp_path):
    import shutil

    spec = synth_spec(Scale.load(str(TINY_SCALE)))
    data = tmp_path / "data"
    synth.generate(data, spec)
    first = _key(data, tmp_path / "r")
    assert _key(data, tmp_path / "r") == first   # stable for the same content
    # another dataset put in the same folder (here: drawn with another seed) is another run
    shutil.rmtree(data)
    synth.generate(data, synth.SynthSpec(**{**spec.__dict__, "seed": spec.seed + 1}))
    assert _key(data, tmp_path / "r") != first
