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


def test_model_code_fingerprint_follows_an_edit_within_one_process(tmp_path, monkeypatch):
    """The fingerprint's per-process memo of model files (what they import, their bytes) is keyed by each
    file's mtime and size: an edit of a model file changes the run key of a config using it at once."""
    import os
    import shutil

    from bench import resolve

    fake = tmp_path / "bench"
    shutil.copytree(resolve.BENCH_DIR / "models", fake / "models")
    monkeypatch.setattr(resolve, "BENCH_DIR", fake)
    cfg = {"roi_head": {"bbox_head": {"type": "FCCBBoxHead"}}}
    first = resolve.model_code_fingerprint(cfg)
    assert first != "none" and resolve.model_code_fingerprint(cfg) == first
    src = fake / "models" / "sbr_cnn.py"
    st = src.stat()
    src.write_text(src.read_text() + "\n# an edit\n")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert resolve.model_code_fingerprint(cfg) != first
    assert resolve.model_code_fingerprint({"type": "MaskRCNN"}) == "none"
