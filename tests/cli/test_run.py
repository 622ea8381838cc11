"""`bench run`: plan, skip what is done, train and evaluate for real, record failures, reuse runs."""
from __future__ import annotations

import json
import subprocess

from bench.results import read_result
from tests.conftest import TEST_RECIPES, TINY_SCALE, bench_env, bench_exe


def _bench(results, data, *args, timeout=900):
    return subprocess.run([bench_exe(), *args], env=bench_env(results, data), capture_output=True, text=True,
                          timeout=timeout)


def test_dry_run_prints_plan_and_writes_nothing(tmp_path):
    p = _bench(tmp_path / "r", tmp_path / "d", "run", "pipeline-test/table-1", "--scale", str(TINY_SCALE), "--dry-run")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "tiny" in out and "run" in out
    assert "not implemented: NoSuchNeck" in out and "a system outside mmdet" in out
    assert "2 run(s) to start" in out and "estimated cost" in out and '"iterations": 6' in out
    assert not (tmp_path / "r").exists()


def test_multi_process_run_is_refused_inline_before_anything_is_written(tmp_path):
    """`--cluster inline` runs in the caller's process: 2 CPU tasks cannot, and nothing is trained or written."""
    p = _bench(tmp_path / "r", tmp_path / "d", "run", "pipeline-test/table-1", "tiny", "--scale", str(TINY_SCALE),
               "--tasks", "2", "--cluster", "inline")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "a multi-process run (--tasks, --gpus > 1) needs --cluster local or slurm" in p.stderr
    assert not (tmp_path / "r" / "smoke" / "pipeline-test").exists()


def test_run_trains_evaluates_and_records(pipeline_run):
    results, data, proc = pipeline_run
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one row diverges on purpose
    assert "1 run(s) done, 1 failed" in proc.stdout
    res = read_result(results / "smoke" / "pipeline-test" / "table-1" / "tiny.json")
    assert res.status == "done"
    for key in ("mask_AP", "mask_AP50", "box_AP", "params_M", "gflops", "fps", "latency_ms"):
        assert res.measured.get(key) is not None, key
    assert 0 <= res.measured["mask_AP"] <= 100
    # a real, small Mask R-CNN with 3 synthetic classes: ResNet-18 + 32-channel heads
    assert 10 < res.measured["params_M"] < 13
    m = res.measurement
    assert m.scale == "smoke" and m.dataset.startswith("synth") and m.iterations == 6 and m.batch_size == 2
    assert m.eval_images == 5 and m.pretrained is False and m.device.startswith("cpu")
    # 5 evaluation images = 3 warm-up + 2 timed: speed comes from the evaluation pass itself
    assert "CPU timing" in m.speed_protocol and "timed during the evaluation pass" in m.speed_protocol
    assert set(m.phases_s) == {"setup", "train", "test", "measure"} and all(v >= 0 for v in m.phases_s.values())
    assert sum(m.phases_s.values()) <= res.wall_s + 1
    assert res.versions["mmdet"] == "3.3.0" and res.versions["mmcv"] == "2.1.0"
    assert res.config["train_cfg"]["max_iters"] == 6 and res.overlay["scale"] == "smoke"
    assert res.published == {"mask_AP": 30.0, "box_AP": 33.0, "params_M": 12.5}


def test_failed_row_is_recorded_with_reason(pipeline_run):
    results, _, _ = pipeline_run
    res = read_result(results / "smoke" / "pipeline-test" / "table-1" / "tiny-nan.json")
    assert res.status == "failed" and "NaN" in res.failure
    assert any("NaN" in line for line in res.log_tail)
    for row in ("missing", "reference"):
        assert not (results / "smoke" / "pipeline-test" / "table-1" / f"{row}.json").exists()


def test_second_run_skips_done_rows_and_reuses_runs_across_tables(pipeline_run):
    results, data, _ = pipeline_run
    tiny = results / "smoke" / "pipeline-test" / "table-1" / "tiny.json"
    before = tiny.stat().st_mtime_ns
    p = _bench(results, data, "run", "pipeline-test/table-1", "tiny", "--scale", str(TINY_SCALE))
    assert p.returncode == 0 and "nothing to run: 1 row(s) already done" in p.stdout
    assert tiny.stat().st_mtime_ns == before
    p = _bench(results, data, "run", "pipeline-test/table-2", "--scale", str(TINY_SCALE))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "result written from the finished run of the same model" in p.stdout
    shared = read_result(results / "smoke" / "pipeline-test" / "table-2" / "same-as-tiny.json")
    assert shared.run_key == read_result(tiny).run_key and shared.published == {"mask_AP": 30.5}
    p = _bench(results, data, "run", "pipeline-test/table-1", "tiny", "--scale", str(TINY_SCALE), "--force", "--dry-run")
    assert "1 run(s) to start" in p.stdout


def test_rows_shared_in_one_invocation_train_once(tmp_path):
    # the same model twice in one table: one run serves both rows
    import shutil

    recipes = tmp_path / "recipes"
    shutil.copytree(TEST_RECIPES, recipes)
    t = recipes / "pipeline-test" / "table-2.yaml"
    t.write_text(t.read_text() + "  - {id: again, label: Again, position: 2, published: {mask_AP: 1.0}}\n")
    env = bench_env(tmp_path / "r", tmp_path / "d", recipes)
    p = subprocess.run([bench_exe(), "run", "pipeline-test/table-2", "--scale", str(TINY_SCALE), "--dry-run"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert "1 run(s) to start" in p.stdout and "shared" in p.stdout and "one training serves" in p.stdout


def test_paper_scale_needs_a_complete_data_root(tmp_path):
    p = _bench(tmp_path / "r", tmp_path / "d", "run", "pipeline-test/table-1", "--scale", "paper")
    assert p.returncode == 1 and "--data-root" in p.stderr
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    p = _bench(tmp_path / "r", tmp_path / "d", "run", "pipeline-test/table-1", "tiny", "--scale", "paper",
               "--data-root", str(root), "--dry-run")
    assert "instances_train2017.json" in p.stdout and "cannot assemble" in p.stdout


def test_unknown_row_and_table(tmp_path):
    p = _bench(tmp_path / "r", tmp_path / "d", "run", "pipeline-test/table-1", "tinny")
    assert p.returncode == 1 and "did you mean 'tiny'" in p.stderr
    p = _bench(tmp_path / "r", tmp_path / "d", "run", "table-9")
    assert p.returncode == 1 and "unknown table" in p.stderr


def test_seeds_run_separately_and_pool_in_the_report(tmp_path):
    env = bench_env(tmp_path / "r", tmp_path / "d")
    p = subprocess.run([bench_exe(), "run", "pipeline-test/table-1", "tiny", "--scale", str(TINY_SCALE), "--seeds", "2"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    first = read_result(tmp_path / "r" / "smoke" / "pipeline-test" / "table-1" / "tiny.json")
    second = read_result(tmp_path / "r" / "seeds" / "1" / "smoke" / "pipeline-test" / "table-1" / "tiny.json")
    assert (first.measurement.seed, second.measurement.seed) == (0, 1) and first.run_key != second.run_key
    p = subprocess.run([bench_exe(), "report", "pipeline-test/table-1", "--html", "--out", str(tmp_path / "rep")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    page = (tmp_path / "rep" / "smoke" / "pipeline-test" / "table-1.html").read_text()
    assert "2 seeds" in page and "mean ± sd over seeds" in page


def test_local_run_needing_gpus_the_machine_lacks_is_refused_before_anything_starts(tmp_path):
    root = tmp_path / "coco"  # a layout that passes the data check; nothing gets far enough to read it
    for d in ("annotations", "train2017", "val2017"):
        (root / d).mkdir(parents=True)
    for f in ("instances_train2017.json", "instances_val2017.json"):
        (root / "annotations" / f).write_text("{}")
    p = _bench(tmp_path / "r", tmp_path / "d", "run", "pipeline-test/table-1", "tiny", "--scale", "paper",
               "--data-root", str(root), "--gpus", "2")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "pipeline-test/table-1/tiny: the run needs 2 GPU(s) and this machine shows 0 GPU(s)" in p.stderr
    assert "--cluster slurm" in p.stderr
    assert not list((tmp_path / "r").rglob("*.json"))  # no pending record, no result, no work dir


def test_rows_differing_only_at_test_time_share_one_training(tmp_path):
    p = _bench(tmp_path / "r", tmp_path / "d", "run", "pipeline-test/table-3", "--scale", str(TINY_SCALE))
    assert p.returncode == 0, p.stdout + p.stderr
    table = tmp_path / "r" / "smoke" / "pipeline-test" / "table-3"
    low, high = read_result(table / "thr-low.json"), read_result(table / "thr-high.json")
    assert low.status == high.status == "done" and low.run_key != high.run_key
    assert low.measurement.trained_by is None and low.measurement.phases_s["train"] > 0
    assert high.measurement.trained_by.startswith(f"run {low.run_key} ") and high.measurement.phases_s["train"] == 0
    assert high.measurement.iterations == low.measurement.iterations == 6
    assert high.config["model"]["test_cfg"]["rcnn"]["mask_thr_binary"] == 0.7
    runs = tmp_path / "r" / "smoke" / "runs"
    assert [d.name for d in runs.iterdir() if list(d.glob("train/iter_*.pth"))] == [low.run_key]
    assert high.measured["mask_AP"] is not None and high.measured["params_M"] == low.measured["params_M"]
    # a later plan says so, and --force trains the first row again while the second still only evaluates
    p = _bench(tmp_path / "r", tmp_path / "d", "run", "pipeline-test/table-3", "--scale", str(TINY_SCALE), "--force",
               "--dry-run")
    assert "trains nothing: evaluates the training of pipeline-test/table-3/thr-low" in p.stdout
    # the report's provenance says which row evaluated a shared training
    p = _bench(tmp_path / "r", tmp_path / "d", "report", "pipeline-test/table-3", "--html", "--out", str(tmp_path / "rep"))
    assert p.returncode == 0, p.stdout + p.stderr
    html = next((tmp_path / "rep").rglob("table-3*.html")).read_text()
    assert html.count(">shared training<") == 1 and low.run_key in html


def test_box_only_detector_is_evaluated_on_boxes_alone(tmp_path):
    # A Faster R-CNN detects boxes from its first iterations; evaluating it with mmdet's "segm" metric
    # too raises "segm is not in results", which would have failed every box-only row (sbr-cnn Tables 8-10)
    p = _bench(tmp_path / "r", tmp_path / "d", "run", "pipeline-test/table-4", "--scale", str(TINY_SCALE))
    assert p.returncode == 0, p.stdout + p.stderr
    res = read_result(tmp_path / "r" / "smoke" / "pipeline-test" / "table-4" / "tiny-boxes.json")
    assert res.status == "done", res.failure
    assert res.config["test_evaluator"]["metric"] == ["bbox"]
    assert res.measured["box_AP"] is not None and not any(k.startswith("mask_") for k in res.measured)


def test_run_ends_with_the_next_steps(pipeline_run):
    """After a run: the first failed row's log command, and the report command with the page it writes."""
    results, data, proc = pipeline_run
    out = proc.stdout
    assert "next:" in out
    assert "bench logs pipeline-test/table-1 tiny-nan" in out           # the row that diverges on purpose
    assert "bench report pipeline-test/table-1 --html" in out
    assert "reports/smoke/pipeline-test/table-1.html" in out
