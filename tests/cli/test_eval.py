"""`bench eval`: a checkpoint evaluated as a row, against a real training of that row.

The suite's one real `bench run` of the pipeline-test table (conftest's `pipeline_run`: the tiny Mask R-CNN row at
the tiny smoke variant) serves the module; each `bench eval` runs in-process (real model, real checkpoint, real
pycocotools). Evaluations write under results/smoke/checkpoint-evals/, which no trained-result reader touches."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from bench.results import checkpoint_result_path, read_result, result_path
from tests.conftest import TEST_RECIPES, TINY_SCALE

TABLE, ROW = "pipeline-test/table-1", "tiny"


@pytest.fixture(scope="module")
def trained(pipeline_run):
    """(results root, data root, the trained result, its final checkpoint): the tiny row of the suite's one real
    `bench run` of the pipeline-test table (conftest's session fixture, shared with test_run/test_collect/...)."""
    results, data, _ = pipeline_run
    res = read_result(result_path(results, "smoke", TABLE, ROW))
    assert res.status == "done", res.failure
    ckpt = sorted((results / "smoke" / "runs" / res.run_key / "train").glob("iter_*.pth"),
                  key=lambda q: int(q.stem.split("_")[1]))[-1]
    return results, data, res, ckpt


def _eval(trained, *args, expect=0):
    results, data, _, _ = trained
    from bench.cli import main

    env = {"BENCH_RESULTS": str(results), "BENCH_DATA": str(data), "BENCH_RECIPES": str(TEST_RECIPES), "COLUMNS": "240"}
    out = CliRunner().invoke(main, ["eval", TABLE, ROW, "--scale", str(TINY_SCALE), *args], env=env,
                             catch_exceptions=False)
    assert out.exit_code == expect, out.output
    return out.output


def _rewritten(src, dst, edit):
    """A copy of checkpoint ``src`` with its state dict edited by ``edit`` (loaded as data)."""
    import torch

    from bench.job import safe_checkpoint_loading

    with safe_checkpoint_loading():
        ckpt = torch.load(str(src), map_location="cpu", weights_only=True)
    edit(ckpt["state_dict"])
    torch.save({"meta": {}, "state_dict": ckpt["state_dict"]}, str(dst))
    return dst


def test_eval_of_the_final_checkpoint_reproduces_the_trained_run(trained):
    results, _, res, ckpt = trained
    trained_path = result_path(results, "smoke", TABLE, ROW)
    before = trained_path.read_bytes()
    out = _eval(trained, "--checkpoint", str(ckpt))
    ev = read_result(checkpoint_result_path(results, "smoke", TABLE, ROW))
    assert ev.source == "checkpoint" and res.source == "trained"
    aps = [k for k in res.measured if k.startswith(("mask_", "box_"))]
    assert "mask_AP" in aps and "box_AP" in aps
    assert {k: ev.measured[k] for k in aps} == {k: res.measured[k] for k in aps}   # exactly, every COCO metric
    assert ev.measured["params_M"] == res.measured["params_M"] and ev.measured["gflops"] == res.measured["gflops"]
    assert ev.measured["fps"] > 0 and "timed during the evaluation pass" in ev.measurement.speed_protocol
    from bench.job import file_sha256

    assert ev.checkpoint["sha256"] == file_sha256(ckpt) and ev.checkpoint["size"] == ckpt.stat().st_size
    assert ev.checkpoint["skipped"] == [] and ev.measurement.eval_limit is None
    assert ev.run_key == res.run_key and ev.measurement.eval_images == res.measurement.eval_images
    assert trained_path.read_bytes() == before                        # the trained result is untouched
    assert f"mask_AP {res.measured['mask_AP']:g}" in out and "result:" in out
    from bench import evaluators as E

    chosen = E.resolve("auto")   # as the trained run's jobs: the fastest verified evaluator installed
    assert ev.measurement.evaluator == res.measurement.evaluator == chosen.label
    assert f"evaluator: {chosen.label}" in out


def test_eval_with_the_reference_evaluator_gives_the_same_numbers(trained):
    """`bench eval --evaluator pycocotools` on the final checkpoint: every COCO cell equals the trained run's
    (evaluated by `auto`, the fastest verified one), and the result names pycocotools."""
    results, _, res, ckpt = trained
    _eval(trained, "--checkpoint", str(ckpt), "--evaluator", "pycocotools")
    ev = read_result(checkpoint_result_path(results, "smoke", TABLE, ROW))
    assert ev.measurement.evaluator.startswith("pycocotools")
    aps = [k for k in res.measured if k.startswith(("mask_", "box_"))]
    assert {k: ev.measured[k] for k in aps} == {k: res.measured[k] for k in aps}


def test_a_renamed_key_is_refused_with_the_key_named(trained, tmp_path):
    results, _, _, ckpt = trained
    key = "roi_head.mask_head.conv_logits.weight"
    bad = _rewritten(ckpt, tmp_path / "renamed.pth", lambda sd: sd.__setitem__(key + "_x", sd.pop(key)))
    ev_path = checkpoint_result_path(results, "smoke", TABLE, ROW)
    before = ev_path.read_bytes() if ev_path.exists() else None
    out = _eval(trained, "--checkpoint", str(bad), expect=1)
    assert f"key(s) missing (in the model, not in the checkpoint): {key}" in out
    assert f"unexpected (in the checkpoint, not in the model): {key}_x" in out and "Refused" in out
    assert (ev_path.read_bytes() if ev_path.exists() else None) == before   # nothing written
    # a prefix that does not cover every offending key is still refused
    out = _eval(trained, "--checkpoint", str(bad), "--allow-partial", "backbone.", expect=1)
    assert "outside the --allow-partial prefixes" in out
    # a tensor of another shape (a head for another class count) is named with both shapes
    import torch

    cls = "roi_head.bbox_head.fc_cls.weight"
    wide = _rewritten(ckpt, tmp_path / "wide.pth", lambda sd: sd.__setitem__(cls, torch.zeros(81, sd[cls].shape[1])))
    out = _eval(trained, "--checkpoint", str(wide), expect=1)
    assert f"1 key(s) shape mismatch: {cls}: (81, 64) in the checkpoint vs (4, 64) in the model" in out


def test_allow_partial_loads_and_says_what_it_skipped(trained, tmp_path):
    results, _, _, ckpt = trained
    key = "roi_head.mask_head.conv_logits.weight"
    bad = _rewritten(ckpt, tmp_path / "renamed.pth", lambda sd: sd.__setitem__(key + "_x", sd.pop(key)))
    out = _eval(trained, "--checkpoint", str(bad), "--allow-partial", "roi_head.mask_head.", "--limit", "2")
    assert "partial load (--allow-partial roi_head.mask_head.): skipped" in out and key in out
    assert "--limit 2: the first 2 evaluation image(s) only" in out
    ev = read_result(checkpoint_result_path(results, "smoke", TABLE, ROW))
    assert any(key in s for s in ev.checkpoint["skipped"]) and ev.checkpoint["allow_partial"] == ["roi_head.mask_head."]
    assert ev.measurement.eval_limit == 2 and ev.measurement.eval_images == 2
    assert "never comparable" in ev.measured_notes["mask_AP"]
    # 2 images cannot be timed (3 warm-up first), and no separate pass over the whole split is made
    assert "fps" not in ev.measured and "too few images to time" in ev.measured_notes["fps"]


def test_a_row_that_cannot_run_is_refused_with_its_status(trained):
    results, data, _, ckpt = trained
    from bench.cli import main

    env = {"BENCH_RESULTS": str(results), "BENCH_DATA": str(data), "BENCH_RECIPES": str(TEST_RECIPES)}
    out = CliRunner().invoke(main, ["eval", TABLE, "reference", "--checkpoint", str(ckpt), "--scale", str(TINY_SCALE)],
                             env=env, catch_exceptions=False)
    assert out.exit_code == 1 and "row 'reference' cannot be evaluated: reference only: a system outside mmdet" in out.output


def test_a_checkpoint_that_pickles_code_is_refused_unloaded(trained, tmp_path):
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pth"
    import torch

    torch.save({"state_dict": {}, "x": Evil()}, str(bad), pickle_module=pickle)
    out = _eval(trained, "--checkpoint", str(bad), expect=1)
    assert "refused" in out and "allow-list" in out and not marker.exists()


def test_report_and_collect_show_the_checkpoint_beside_the_trained_numbers(trained, tmp_path):
    results, data, res, ckpt = trained
    ev_path = checkpoint_result_path(results, "smoke", TABLE, ROW)
    if not ev_path.exists():
        _eval(trained, "--checkpoint", str(ckpt))
    ev = read_result(ev_path)
    from bench.cli import main

    env = {"BENCH_RESULTS": str(results), "BENCH_DATA": str(data), "BENCH_RECIPES": str(TEST_RECIPES)}
    out = CliRunner().invoke(main, ["report", TABLE, "--html", "--format", "csv", "--out", str(tmp_path / "rep")],
                             env=env, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    page = (tmp_path / "rep" / "smoke" / "pipeline-test" / "table-1.html").read_text()
    import re

    row_html = re.search(r'<tr id="row-tiny".*?</tr>', page, re.S).group(0)
    # one labelled pair per metric column (AP, box AP, #params): the trained number and the checkpoint's
    assert row_html.count('class="src small">trained here<') == 3
    label = "checkpoint" + (f" (first {ev.measurement.eval_limit} images)" if ev.measurement.eval_limit else "")
    assert row_html.count('data-source="checkpoint"') == 3 and f"{label}: {ev.measured['params_M']:.1f}" in row_html
    assert ev.checkpoint["sha256"] in row_html
    # the other rows have no checkpoint evaluation: no such label
    assert "src small" not in re.search(r'<tr id="row-tiny-nan".*?</tr>', page, re.S).group(0)
    import csv as csvlib

    rows = list(csvlib.DictReader(next((tmp_path / "rep" / "smoke").rglob("table-1*.csv")).open()))
    tiny = next(r for r in rows if r["row"] == ROW)
    assert float(tiny["mask_AP.checkpoint"]) == ev.measured["mask_AP"]
    assert float(tiny["mask_AP.measured"]) == res.measured["mask_AP"] and tiny["checkpoint"] == label
    out = CliRunner().invoke(main, ["collect", TABLE, "--format", "csv"], env=env, catch_exceptions=False)
    head = out.output.splitlines()[0]
    assert "mask_AP:checkpoint" in head and "mask_AP:measured" in head


def test_checkpoint_zoo_takes_the_released_file_by_name_and_never_downloads(trained, tmp_path, monkeypatch):
    import shutil

    from bench.zoo import link
    from bench.recipes import Catalogue

    results, _, res, ckpt = trained
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("BENCH_WEIGHTS", raising=False)
    zoo = link(Catalogue(TEST_RECIPES).load(TABLE).row(ROW))   # the tiny row's base config: mmdet's Mask R-CNN
    assert zoo.model.file_name == "mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth" and not zoo.exact
    (tmp_path / "empty").mkdir()
    out = _eval(trained, "--checkpoint", "zoo", "--weights-dir", str(tmp_path / "empty"), expect=1)
    assert f"the released checkpoint {zoo.model.file_name} is not here" in out and zoo.model.weights in out
    assert "never downloads" in out
    # a file of that name in --weights-dir is what `--checkpoint zoo` evaluates (here: the tiny row's own weights,
    # so its numbers must be the training's)
    (tmp_path / "w").mkdir()
    shutil.copy(ckpt, tmp_path / "w" / zoo.model.file_name)
    out = _eval(trained, "--checkpoint", "zoo", "--weights-dir", str(tmp_path / "w"))
    ev = read_result(checkpoint_result_path(results, "smoke", TABLE, ROW))
    assert ev.checkpoint["path"] == str((tmp_path / "w" / zoo.model.file_name).resolve())
    assert "mmdet model zoo" in ev.checkpoint["note"] and zoo.model.weights in ev.checkpoint["note"]
    assert ev.measured["mask_AP"] == res.measured["mask_AP"] and ev.measured["box_AP"] == res.measured["box_AP"]
    # the released file's name carries its SHA-256 prefix (d4b0c5d6): these bytes are not it, and it is said
    assert ev.checkpoint["zoo"]["sha256_prefix"] == "d4b0c5d6" and ev.checkpoint["zoo"]["sha256_matches"] is False
    assert "not the released file" in out
    from bench.cli import main

    env = {"BENCH_RESULTS": str(results), "BENCH_RECIPES": str(TEST_RECIPES)}
    out = CliRunner().invoke(main, ["report", TABLE, "--html", "--out", str(tmp_path / "rep")], env=env,
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    page = (tmp_path / "rep" / "smoke" / "pipeline-test" / "table-1.html").read_text()
    assert page.count(">checkpoint (named as the zoo file, other bytes): ") == 3
    assert page.count('class="src small">trained here<') == 3 and ">released weights" not in page


@pytest.mark.browser
def test_report_page_in_chromium_labels_the_checkpoint_and_trained_here(trained, tmp_path, monkeypatch):
    """The page as a browser renders it (DOM after layout, and a screenshot kept in tests/artifacts/). The checkpoint
    is the tiny row's own, put under the zoo's file name (the real release cannot be downloaded here)."""
    import shutil

    from bench.cli import main
    from bench.zoo import link
    from bench.recipes import Catalogue
    from tests.test_report_html import ARTIFACTS, PNG, browse

    results, data, res, ckpt = trained
    ev_path = checkpoint_result_path(results, "smoke", TABLE, ROW)
    if not ev_path.exists() or "zoo" not in str(read_result(ev_path).checkpoint.get("note")):
        zoo = link(Catalogue(TEST_RECIPES).load(TABLE).row(ROW))
        (tmp_path / "w").mkdir()
        shutil.copy(ckpt, tmp_path / "w" / zoo.model.file_name)
        _eval(trained, "--checkpoint", "zoo", "--weights-dir", str(tmp_path / "w"))
    env = {"BENCH_RESULTS": str(results), "BENCH_RECIPES": str(TEST_RECIPES)}
    out = CliRunner().invoke(main, ["report", TABLE, "--html", "--out", str(tmp_path / "rep")], env=env,
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    page = tmp_path / "rep" / "smoke" / "pipeline-test" / "table-1.html"
    dom = browse(page.as_uri(), tmp_path, "--dump-dom")
    import re

    row = re.search(r'<tr id="row-tiny".*?</tr>', dom, re.S).group(0)
    assert row.count(">checkpoint (named as the zoo file, other bytes): ") == 3 and row.count(">trained here<") == 3
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-checkpoint-eval.png"
    browse(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1400,900")
    assert shot.read_bytes()[:8] == PNG


def test_released_weights_label_only_for_the_released_bytes():
    """The label the report gives a checkpoint evaluation, from what the result records (a constructed record:
    the released file itself cannot be downloaded here)."""
    from bench.report.frame import RowView
    from bench.results import Measurement, Result

    def label(checkpoint: dict, limit=None) -> str:
        m = Measurement(scale="paper", dataset="coco", eval_split="val2017", batch_size=1, gpus=1, pretrained=True,
                        seed=0, device="test fixture (not a measurement)", eval_limit=limit)
        res = Result(status="done", table=TABLE, row=ROW, label=ROW, run_key="k", config_hash="h", measurement=m,
                     source="checkpoint", checkpoint=checkpoint)
        return RowView(row=None, factors=[], row_status="", run_status="", detail="", cells={}, results=[],
                       provenance=None, last_log=None, released=res).released_label

    assert label({"zoo": {"sha256_matches": True}}) == "released weights"
    assert label({"zoo": {"sha256_matches": True}}, limit=50) == "released weights (first 50 images)"
    assert label({"zoo": {"sha256_matches": False}}) == "checkpoint (named as the zoo file, other bytes)"
    assert label({"zoo": {"sha256_matches": None}}) == "released weights (name carries no checksum)"
    assert label({"path": "x.pth"}) == "checkpoint"


def test_legacy_format_checkpoints_load_as_data_and_code_in_them_is_refused(tmp_path):
    """torch.save before 1.6 wrote a non-zip format (many released checkpoints of 2019-2020 are in it): torch reads
    the globals of zip files only, so the weights_only unpickler is what refuses code there."""
    import collections

    import torch

    from bench.evaluate import EvalError, read_state_dict

    good = tmp_path / "legacy.pth"
    torch.save({"meta": {"mmdet_version": "2.0.0", "CLASSES": ("a", "b")},
                "state_dict": collections.OrderedDict([("module.backbone.w", torch.ones(2))])}, str(good),
               _use_new_zipfile_serialization=False)
    sd = read_state_dict(good)
    assert list(sd) == ["backbone.w"] and sd["backbone.w"].tolist() == [1.0, 1.0]
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "legacy-evil.pth"
    torch.save({"state_dict": {}, "x": Evil()}, str(bad), _use_new_zipfile_serialization=False)
    with pytest.raises(EvalError, match="cannot be loaded as data"):
        read_state_dict(bad)
    assert not marker.exists()
