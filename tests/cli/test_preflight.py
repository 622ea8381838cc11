"""`bench preflight`, `bench weights`, `--data-root DATASET=DIR` and the preflight `bench run --scale paper`
runs before submitting, on the real-format fixtures (fast cases: each fails or stops before training)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.test_preflight import cityscapes_root, coco_root, paper_plan  # noqa: F401  (fixtures)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("BENCH_WEIGHTS", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_data_root_pairs_plan_a_mixed_table(coco_root, cityscapes_root, tmp_path):
    """amf-sparseinst Table 10 mixes COCO and Cityscapes rows: with both roots every runnable row plans."""
    from bench.plan import PlanError, parse_data_roots

    both = parse_data_roots([f"coco={coco_root}", f"cityscapes={cityscapes_root}"])
    plan = paper_plan("amf-sparseinst/table-10", None, both, tmp_path / "r")
    planned = {pr.row.id: pr for pr in plan.rows if pr.status == "runnable"}
    assert all(pr.action in ("run", "shared") for pr in planned.values()), \
        {k: pr.reason for k, pr in planned.items() if pr.action not in ("run", "shared")}
    city = [s for s in plan.runs.values() if s.dataset == "cityscapes"]
    assert len(city) == 4 and all(s.dataset_root == str(cityscapes_root) for s in city)

    only_coco = paper_plan("amf-sparseinst/table-10", None, parse_data_roots([str(coco_root)]), tmp_path / "r")
    cannot = [pr for pr in only_coco.rows if pr.row.id.startswith("city-")]
    assert all(pr.action == "cannot run" and "cannot assemble" in pr.reason for pr in cannot)
    with pytest.raises(PlanError, match="unknown dataset 'voc'"):
        parse_data_roots(["voc=/data/voc"])
    with pytest.raises(PlanError, match="coco given twice"):
        parse_data_roots(["coco=/a", "coco=/b"])


def test_paper_estimate_covers_iteration_schedules_and_uses_a_gpu_preflight(coco_root, cityscapes_root, tmp_path):
    from bench.plan import parse_data_roots
    from bench.preflight import preflight_path
    from bench.results import atomic_write_json

    roots = parse_data_roots([f"coco={coco_root}", f"cityscapes={cityscapes_root}"])
    plan = paper_plan("amf-sparseinst/table-10", ["city-sparseinst-1024x512", "condinst-r50-800"], roots, tmp_path / "r")
    by_row = {pr.row.id: pr for pr in plan.rows}
    city = by_row["city-sparseinst-1024x512"]
    # 72,000 iterations x batch 8 x 0.11 V100-s per image
    assert city.est_gpu_hours == pytest.approx(72000 * 8 * 0.11 / 3600, abs=0.1)
    assert city.est_source.startswith("formula")
    assert by_row["condinst-r50-800"].est_gpu_hours > 0   # mmdet's 90k-iteration CondInst config

    atomic_write_json(preflight_path(tmp_path / "r", city.run_key),
                      {"status": "ok", "device": "cuda: NVIDIA H200", "s_per_iter": 0.5, "iters": 2})
    again = {pr.row.id: pr for pr in paper_plan("amf-sparseinst/table-10", ["city-sparseinst-1024x512"], roots,
                                                tmp_path / "r").rows}
    pr = again["city-sparseinst-1024x512"]
    assert pr.est_source.startswith("preflight on cuda: NVIDIA H200")
    assert pr.est_gpu_hours == pytest.approx(0.5 * 72000 * 8 / 3600, abs=0.1)   # the recipe's 8 GPUs


def test_preflight_json_names_every_field(coco_root, cli, empty_hub):
    res = cli("preflight", "sbr-cnn/table-2", "--row", "mask-1x", "--data-root", f"coco={coco_root}", "--json",
              expect=1)
    (rec,) = json.loads(res.stdout)
    for key in ("table", "row", "status", "reason", "train_images", "train_instances", "eval_images",
                "eval_instances", "s_per_iter", "peak_mem_mb", "weights"):
        assert key in rec
    assert rec["status"] == "failed" and rec["train_instances"] > 0 and rec["eval_instances"] > 0
    assert rec["weights"][0]["url"] == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert rec["weights"][0]["put_at"] == str(empty_hub / "resnet50-0676ba61.pth")


def test_run_at_paper_scale_refuses_rows_that_fail_preflight(coco_root, cli, empty_hub, tmp_path):
    """`bench run --scale paper` preflights before anything is submitted: a row whose weights are missing
    is recorded as failed with the reason and nothing is submitted."""
    res = cli("run", "sbr-cnn/table-2", "mask-1x", "--scale", "paper", "--data-root", str(coco_root),
              "--cluster", "slurm", expect=1)
    assert "refused (not submitted): sbr-cnn/table-2/mask-1x: weights not on this machine" in res.output
    assert "nothing to submit" in res.output
    result = json.loads((tmp_path / "results" / "paper" / "sbr-cnn" / "table-2" / "mask-1x.json").read_text())
    assert result["status"] == "failed" and result["failure"].startswith("refused by preflight: weights not on")


def test_run_preflight_is_cached_by_run_key(coco_root, tmp_path, empty_hub, monkeypatch):
    """A run whose preflight record is cached (ok, 1 iteration, same device) is not preflighted again and
    stays in the plan; a failing one is taken out."""
    from bench.cli import _preflight_before_submit
    from bench.preflight import preflight_path
    from bench.results import atomic_write_json

    results = tmp_path / "results"
    plan = paper_plan("sbr-cnn/table-2", ["mask-1x", "htc"], {"coco": coco_root}, results)
    keys = {pr.row.id: pr.run_key for pr in plan.rows}
    atomic_write_json(preflight_path(results, keys["mask-1x"]),
                      {"table": "sbr-cnn/table-2", "row": "mask-1x", "rows": ["sbr-cnn/table-2/mask-1x"],
                       "run_key": keys["mask-1x"], "status": "ok", "reason": "", "iters": 1,
                       "device": "cpu (2 threads)", "finished_at": time.time()})
    _preflight_before_submit(plan, results)
    assert list(plan.runs) == [keys["mask-1x"]]
    htc = json.loads((results / "paper" / "sbr-cnn" / "table-2" / "htc.json").read_text())
    assert htc["status"] == "failed" and "weights not on this machine" in htc["failure"]
    assert json.loads(preflight_path(results, keys["htc"]).read_text())["status"] == "failed"


def test_data_synth_layouts_and_data_check_pairs(cli, tmp_path):
    out = cli("data", "synth", "--layout", "coco", "--out", str(tmp_path / "coco"), "--train-images", "2",
              "--val-images", "1").output
    assert "train2017 2 images" in out
    cli("data", "synth", "--layout", "cityscapes", "--out", str(tmp_path / "cs"), "--train-images", "1",
        "--val-images", "1")
    res = cli("data", "check", f"coco={tmp_path / 'coco'}", f"cityscapes={tmp_path / 'cs'}")
    assert "coco (val2017) ok" in res.output and "cityscapes (cityscapes-val) ok" in res.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("not a fixture")
    res = cli("data", "synth", "--layout", "coco", "--out", str(tmp_path / "other"), expect=1)
    assert "was not written by" in res.output and (tmp_path / "other" / "keep.txt").exists()


def test_multi_gpu_paper_run_on_a_cpu_is_refused_before_it_starts(coco_root, cli):
    """It used to start and die with KeyError: 'RANK' (the distributed launcher without its variables)."""
    res = cli("run", "sbr-cnn/table-2", "mask-1x", "--scale", "paper", "--data-root", str(coco_root),
              "--cluster", "inline", "--no-preflight", expect=1)
    assert "needs 8 GPU(s) and this machine shows 0 GPU(s)" in res.output and "bench preflight" in res.output
    assert "RANK" not in res.output
