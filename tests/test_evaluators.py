"""COCO evaluators (bench/evaluators.py) against pycocotools, the reference, on the same real
predictions: every installed evaluator gives the 12 stats to 1e-9 and the same per-image matches, or
is refused with the difference; a deliberately different evaluator is refused; mmdet's real CocoMetric,
swapped onto an evaluator, gives pycocotools' numbers and still feeds bench.matches.capture()."""
from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict

import numpy as np
import pytest
from pycocotools.coco import COCO

from bench import evaluators as E
from bench import matches as M


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory):
    """One evaluator cache for the module (the fixed set is made once), never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BENCH_CACHE", str(tmp_path_factory.mktemp("evaluators-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def fixed_set():
    gt_data, boxes, segms = E.fixture()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
    return gt, boxes, segms


def _load(gt, preds):
    with contextlib.redirect_stdout(io.StringIO()):
        return gt.loadRes([dict(d) for d in preds])


@pytest.mark.parametrize("name", [n for n in E.KNOWN if n != E.REFERENCE])
def test_every_installed_evaluator_matches_pycocotools_or_is_refused_with_the_difference(name, fixed_set):
    # every known evaluator is in the dev extras that the README's test command installs: a missing one is a
    # broken test install, not a case to skip
    assert E.version(name) is not None, f"{name} is not installed: run ./install.sh --dev"
    gt, boxes, segms = fixed_set
    worst, matches_same = 0.0, True
    for iou_type, preds in (("bbox", boxes), ("segm", segms)):
        dt = _load(gt, preds)
        for params in (E.mmdet_params(gt, iou_type), E.default_params(gt, iou_type)):
            ref = E.evaluate(E.REFERENCE, gt, dt, iou_type, params)
            got = E.evaluate(name, gt, dt, iou_type, params)
            assert ref.stats.shape == got.stats.shape == (12,)
            assert ref.stats[0] > 0.05  # a real evaluation, not an empty one
            worst = max(worst, float(np.abs(got.stats - ref.stats).max()))
            if got.matches is None:
                matches_same = False
                continue
            for f in M.FIELDS:
                matches_same &= np.array_equal(getattr(got.matches, f), getattr(ref.matches, f))
            for s in ("AP", "AP50", "AP75"):
                matches_same &= M.ap_from_matches(got.matches, s) == M.ap_from_matches(ref.matches, s)
    check = E.run_check(name)
    assert check.max_stats_diff == pytest.approx(worst, abs=1e-12)
    if worst <= E.STATS_TOL and matches_same:
        assert check.verified and check.reason == "" and check.matches == "identical"
        assert "cross-checked against pycocotools" in check.label() and check.version in check.label()
    else:
        assert not check.verified and check.reason
        if worst > E.STATS_TOL:
            assert "stats differ" in check.reason and " vs " in check.reason
        else:
            assert check.stats_identical and ("matches" in check.reason)


def test_hotcoco_is_verified_and_faster_coco_eval_serves_no_job(fixed_set):
    """What this machine's pinned versions give (skipped where they are not installed)."""
    if E.version("hotcoco") is not None:
        assert E.cross_check("hotcoco").verified
    if E.version("faster-coco-eval") is not None:
        c = E.cross_check("faster-coco-eval")
        assert c.stats_identical and not c.verified and "no per-image matches" in c.reason
        with pytest.raises(E.EvaluatorError, match="refused: faster-coco-eval .* no per-image matches"):
            E.resolve("faster-coco-eval")


def _perturbed(real, stats=None, flip_match=False):
    def run(gt, dt, iou_type, params, want_matches=True):
        ev = real(gt, dt, iou_type, params, want_matches)
        if stats is not None:
            ev.stats = ev.stats.copy()
            ev.stats[stats] += 1e-6
        if flip_match and ev.matches is not None:
            ev.matches.det_tp = ev.matches.det_tp.copy()
            ev.matches.det_tp[0] ^= 1
        return ev
    return run


def test_an_evaluator_that_differs_is_refused_with_the_difference(monkeypatch, fixed_set):
    # a real evaluator (hotcoco, else pycocotools itself) with one stat moved by 1e-6, then one match flipped
    name = "hotcoco" if E.version("hotcoco") else "pycocotools"
    real = E.RUNNERS[name]
    monkeypatch.setitem(E.RUNNERS, name, _perturbed(real, stats=3))
    c = E.run_check(name)
    assert not c.verified and not c.stats_identical
    assert "APs" in c.reason and "by more than 1e-09" in c.reason and c.max_stats_diff == pytest.approx(1e-6, rel=1e-3)
    monkeypatch.setitem(E.RUNNERS, name, _perturbed(real, flip_match=True))
    c = E.run_check(name)
    assert c.stats_identical and not c.verified and "per-image matches differ" in c.reason and "det_tp[0]" in c.reason


def test_cross_check_is_cached_per_version_and_auto_takes_a_verified_one(fixed_set):
    first = E.cross_check("pycocotools", refresh=True)
    files = list(E.cache_root().glob("pycocotools-*--check-v*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["version"] == first.version
    again = E.cross_check("pycocotools")
    assert again.cached and again.verified and again.cases == json.loads(files[0].read_text())["cases"]
    auto = E.resolve("auto")
    assert auto.name in E.KNOWN and auto.version in auto.label
    if auto.name != E.REFERENCE:
        check = E.cross_check(auto.name)
        assert check.verified and check.seconds < check.reference_seconds
    with pytest.raises(E.EvaluatorError, match="unknown"):
        E.resolve("detectron2")


def _cocometric_results(gt, boxes, segms):
    """The fixed set's predictions as mmdet's CocoMetric.process() leaves them (xyxy boxes, label
    indices, RLE masks), one entry per image."""
    cat_index = {c: k for k, c in enumerate(sorted(gt.getCatIds()))}
    per = defaultdict(list)
    for b, s in zip(boxes, segms):
        per[b["image_id"]].append((b, s))
    out = []
    for img_id in sorted(gt.getImgIds()):
        pairs = per.get(img_id, [])
        xyxy = np.array([[x, y, x + w, y + h] for (x, y, w, h) in (p[0]["bbox"] for p in pairs)], np.float32).reshape(-1, 4)
        out.append(({}, {"img_id": img_id, "bboxes": xyxy,
                         "scores": np.array([p[0]["score"] for p in pairs], np.float32),
                         "labels": np.array([cat_index[p[0]["category_id"]] for p in pairs], np.int64),
                         "masks": [dict(p[1]["segmentation"]) for p in pairs]}))
    return out


def test_mmdet_cocometric_swapped_onto_an_evaluator_gives_pycocotools_numbers_and_matches(tmp_path, fixed_set):
    name = "hotcoco"
    assert E.version(name) is not None, "hotcoco is not installed: run ./install.sh --dev"
    from mmdet.evaluation.metrics import CocoMetric

    gt, boxes, segms = fixed_set
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(E.fixture()[0]))  # as generated (COCOeval turns gt polygons into RLE in place)
    names = [c["name"] for c in sorted(gt.dataset["categories"], key=lambda c: c["id"])]

    def metric_of(evaluator):
        metric = CocoMetric(ann_file=str(ann), metric=["bbox", "segm"])
        metric.dataset_meta = {"classes": names}
        with contextlib.redirect_stdout(io.StringIO()), M.capture() as got, E.use(evaluator):
            out = metric.compute_metrics(_cocometric_results(gt, boxes, segms))
        return out, dict(got)

    ref, ref_m = metric_of("pycocotools")
    got, got_m = metric_of(name)
    from mmdet.evaluation.metrics import coco_metric

    assert coco_metric.COCOeval.__module__.startswith("pycocotools")  # swapped back after the block
    assert ref["bbox_mAP"] > 0.05 and got == ref
    assert set(got_m) == set(ref_m) == {"bbox", "segm"}
    for t in ("bbox", "segm"):
        for f in M.FIELDS:
            assert np.array_equal(getattr(got_m[t], f), getattr(ref_m[t], f)), (t, f)
