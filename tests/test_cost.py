"""Smoke-scale cost estimates (bench.cost): signatures, and results > calibration > formula."""
from __future__ import annotations

import json

import pytest

from bench import cost
from bench.plan import Scale
from bench.recipes import Catalogue
from bench.resolve import row_config


def _model(table: str, row: str) -> dict:
    t = Catalogue().load(table)
    r = next(r for r in t.rows if r.id == row)
    return row_config(r.model).model.to_dict()


def test_signatures_follow_modules_not_numbers():
    m1x, m3x = _model("sbr-cnn/table-2", "mask-1x"), _model("sbr-cnn/table-2", "mask-3x")
    htc = _model("sbr-cnn/table-2", "htc")
    assert cost.model_signature(m1x) == "MaskRCNN/StandardRoIHead/ResNet-50/FPN"
    assert cost.module_signature(m1x) == cost.module_signature(m3x)  # only the schedule differs
    assert cost.model_signature(htc).startswith("HybridTaskCascade/HybridTaskCascadeRoIHead/")
    # SparseInst against AMF-SparseInst: another encoder; AMF with and without FEM: another module inside it
    base = _model("amf-sparseinst/table-4", "sparseinst")
    assert cost.model_signature(base) == "SparseInst/-/ResNetV1d-50/InstanceContextEncoder"
    rows = [r.id for r in Catalogue().load("amf-sparseinst/table-4").rows]
    fine = {cost.module_signature(_model("amf-sparseinst/table-4", r)) for r in rows}
    coarse = {cost.model_signature(_model("amf-sparseinst/table-4", r)) for r in rows}
    assert len(fine) > len(coarse) >= 2


def _run_record(root, key: str, model: dict, train_s: float, iters: int, test_s: float, eval_images: int,
                input_size=(160, 160), **measurement):
    d = root / "smoke" / "runs" / key
    d.mkdir(parents=True)
    m = dict(iterations=iters, eval_images=eval_images, input_size=list(input_size),
             phases_s=dict(setup=5.0, train=train_s, test=test_s, measure=1.0), **measurement)
    (d / "result.json").write_text(json.dumps(dict(status="done", config=dict(model=model), measurement=m)))


def test_estimates_prefer_your_results_then_the_calibration_then_the_formula(tmp_path):
    scale = Scale.load("smoke")
    m1x = _model("sbr-cnn/table-2", "mask-1x")
    sparse = _model("amf-sparseinst/table-4", "sparseinst")
    unknown = dict(m1x, backbone=dict(type="ResNet", depth=152))  # a combination nothing has measured

    est = cost.CostModel(tmp_path, "smoke")
    r = est.rate(m1x, scale.input_size)
    assert r.kind == "calibration", r.source  # shipped: benchmarks/smoke_costs.py measured it here
    assert est.rate(unknown, scale.input_size).kind == "formula"

    # finished runs of the same model at this scale win over the calibration: median of their rates
    for i, train_s in enumerate((200.0, 400.0, 300.0)):
        _run_record(tmp_path, f"k{i}", m1x, train_s=train_s, iters=100, test_s=24.0, eval_images=24)
    # runs that resumed or evaluated another run's training say nothing about training time
    _run_record(tmp_path, "resumed", m1x, train_s=1.0, iters=100, test_s=24.0, eval_images=24, resumed_from="x.pth")
    est = cost.CostModel(tmp_path, "smoke")
    r = est.rate(m1x, scale.input_size)
    assert r.kind == "results" and "same modules, n=3" in r.source
    assert r.s_per_iter == pytest.approx(3.0) and r.test_s_per_image == pytest.approx(1.0)
    assert r.fixed_s == pytest.approx(6.0)
    minutes, source = est.minutes(m1x, 200, 24, scale.input_size)
    assert minutes == pytest.approx((200 * 3.0 + 24 * 1.0 + 6.0) / 60) and source == r.source
    # at twice the input area the per-iteration and per-image parts double, the fixed part does not
    assert est.minutes(m1x, 200, 24, [160, 320])[0] == pytest.approx((2 * (600 + 24) + 6.0) / 60)
    # another model is untouched by those results
    assert est.rate(sparse, scale.input_size).kind in ("calibration", "formula")


def test_dry_run_names_each_estimates_source(tmp_path):
    import subprocess

    from tests.conftest import REPO, bench_env, bench_exe

    env = bench_env(tmp_path / "r", tmp_path / "d", recipes=REPO / "recipes")
    p = subprocess.run([bench_exe(), "run", "sbr-cnn/table-2", "--dry-run"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "5 run(s) to start" in p.stdout
    assert "calibration" in p.stdout and "formula" not in p.stdout
    assert "est. min" in p.stdout


def test_runs_sampling_other_roi_counts_do_not_estimate_each_other(tmp_path):
    """A scale's type_caps lower a heavy head's sampled RoIs (512 -> 32 at smoke): runs finished under the
    old count (128) must not set the estimate of the capped model, and the shipped calibration of a
    capped signature says which count it measured."""
    import copy

    from bench.plan import make_plan

    t = Catalogue().load("sbr-cnn/table-11")
    plan = make_plan([(t, [next(r for r in t.rows if r.id == "sbr-cnn")])], "smoke", tmp_path / "plan")
    capped = plan.runs[plan.rows[0].run_key].config["model"]
    assert cost.sampled_rois(capped) == [32]
    old = copy.deepcopy(capped)
    for stage in old["train_cfg"]["rcnn"]:
        stage["sampler"]["num"] = 128
    assert cost.sampled_rois(old) == [128] and cost.module_signature(old) == cost.module_signature(capped)

    root = tmp_path / "results"
    _run_record(root, "old", old, train_s=6000.0, iters=200, test_s=170.0, eval_images=24)
    est = cost.CostModel(root, "smoke")
    assert est.rate(old, [160, 160]).kind == "results"
    r = est.rate(capped, [160, 160])
    assert r.kind == "calibration" and r.s_per_iter < 30.0, r   # not the old runs' 30 s/iteration
    cal = cost.calibration("smoke")["rates"][cost.module_signature(capped)]
    assert cal["rois"] == [32]
    _run_record(root, "new", capped, train_s=2000.0, iters=200, test_s=170.0, eval_images=24)
    r = cost.CostModel(root, "smoke").rate(capped, [160, 160])
    assert r.kind == "results" and r.s_per_iter == pytest.approx(10.0)
