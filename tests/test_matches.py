"""Per-image COCO matches and the paired bootstrap, on real pycocotools evaluations of constructed
predictions: AP recomputed from the matches equals COCOeval's; integer image weights equal COCOeval
on the physically duplicated images; a real AP difference gives an interval that excludes 0 and
holds the population's difference; two draws of one predictor give an interval holding 0."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench import matches as M
from bench.results import read_result

N_CATS = 4


def ground_truth(n_img: int, seed: int = 0, size: int = 120) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": size, "height": size, "file_name": f"{i}.jpg"} for i in range(n_img)]
    anns, aid = [], 1
    for im in images:
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.uniform(0, size - 40, 2)
            w, h = rng.uniform(6, 38, 2)
            anns.append({"id": aid, "image_id": im["id"], "category_id": int(rng.integers(1, N_CATS + 1)),
                         "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                         "iscrowd": int(rng.random() < 0.05)})
            aid += 1
    return images, anns


def coco(images: list[dict], anns: list[dict]) -> COCO:
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(N_CATS)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def predict(images: list[dict], anns: list[dict], seed: int, jitter: float, recall: float = 0.85,
            size: int = 120) -> list[dict]:
    """A predictor: finds each object with probability ``recall``, its box jittered by ``jitter`` px,
    and adds as many false positives as there are objects. Distinct scores (no ties)."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in anns:
        if rng.random() < recall:
            x, y, w, h = a["bbox"]
            j = rng.normal(0, jitter, 4)
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                         "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]})
    for _ in range(len(anns)):
        x, y = rng.uniform(0, size - 25, 2)
        dets.append({"image_id": int(rng.choice([im["id"] for im in images])),
                     "category_id": int(rng.integers(1, N_CATS + 1)), "bbox": [float(x), float(y), 20.0, 20.0]})
    for d, s in zip(dets, rng.permutation(len(dets))):
        d["score"] = float(s + 1) / (len(dets) + 1)
    return dets


def as_segm(dets: list[dict], size: int = 120) -> list[dict]:
    out = []
    for d in dets:
        x, y, w, h = d["bbox"]
        m = np.zeros((size, size), np.uint8, order="F")
        m[int(max(0, y)):int(min(size, y + h)) + 1, int(max(0, x)):int(min(size, x + w)) + 1] = 1
        rle = mask_util.encode(m)
        rle["counts"] = rle["counts"].decode()
        out.append({"image_id": d["image_id"], "category_id": d["category_id"], "segmentation": rle,
                    "score": d["score"]})
    return out


def evaluate(gt: COCO, dets: list[dict], iou_type: str = "bbox", img_ids=None) -> tuple[np.ndarray, M.Matches]:
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets) if dets else COCO()
        ev = COCOeval(gt, dt, iou_type)
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        with M.capture() as got:
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
    return ev.stats, got[iou_type]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_from_matches_equals_cocoeval(iou_type, seed):
    images, anns = ground_truth(50, seed=seed)
    if iou_type == "segm":
        for a in anns:  # rectangle polygons: a mask the size of the box
            x, y, w, h = a["bbox"]
            a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    gt = coco(images, anns)
    dets = predict(images, anns, seed=10 + seed, jitter=2.0 + seed)
    stats, m = evaluate(gt, as_segm(dets) if iou_type == "segm" else dets, iou_type)
    for suffix, stat in (("AP", stats[0]), ("AP50", stats[1]), ("AP75", stats[2])):
        assert M.ap_from_matches(m, suffix) == pytest.approx(100 * stat, abs=1e-9), suffix


def test_integer_weights_equal_cocoeval_on_duplicated_images():
    images, anns = ground_truth(30, seed=3)
    dets = predict(images, anns, seed=4, jitter=3.0)
    _, m = evaluate(coco(images, anns), dets)
    weights = np.random.default_rng(5).multinomial(len(images), np.full(len(images), 1 / len(images)))
    # the same resample built for real: each image copied weights[i] times under new ids
    img2, ann2, det2, aid = [], [], [], 1
    for i, im in enumerate(images):
        for c in range(int(weights[i])):
            new = 1000 * (c + 1) + im["id"]
            img2.append(dict(im, id=new))
            for a in anns:
                if a["image_id"] == im["id"]:
                    ann2.append(dict(a, id=aid, image_id=new))
                    aid += 1
            det2 += [dict(d, image_id=new) for d in dets if d["image_id"] == im["id"]]
    stats, _ = evaluate(coco(img2, ann2), det2)
    assert M.bootstrap_ap(m, weights[None].astype(float))[0] == pytest.approx(100 * stats[0], abs=1e-6)


def test_real_difference_gives_an_interval_excluding_zero_holding_the_true_difference():
    # the population: 600 images; the study sample: 150 of them, evaluated for both predictors
    images, anns = ground_truth(600, seed=7)
    gt = coco(images, anns)
    good, weak = predict(images, anns, seed=8, jitter=1.5), predict(images, anns, seed=9, jitter=4.0)
    true_delta = 100 * (evaluate(gt, good)[0][0] - evaluate(gt, weak)[0][0])
    sample = sorted(np.random.default_rng(10).choice([im["id"] for im in images], 150, replace=False).tolist())
    _, m_good = evaluate(gt, good, img_ids=sample)
    _, m_weak = evaluate(gt, weak, img_ids=sample)
    pb = M.paired_bootstrap([m_good], [m_weak])
    assert pb.resamples == 1000 and pb.images == 150
    assert pb.lo > 0, pb
    assert pb.lo <= true_delta <= pb.hi, (true_delta, pb)
    assert pb.mde == pytest.approx(M.MDE_FACTOR * pb.se)
    # the paired interval is narrower than treating the two rows as independent samples
    w = np.random.default_rng(11).multinomial(150, np.full(150, 1 / 150), size=(2, 300)).astype(float)
    independent = M.bootstrap_ap(m_good, w[0]) - M.bootstrap_ap(m_weak, w[1])
    assert pb.se < np.std(independent, ddof=1)


def test_two_draws_of_one_predictor_give_an_interval_holding_zero():
    images, anns = ground_truth(150, seed=12)
    gt = coco(images, anns)
    _, a = evaluate(gt, predict(images, anns, seed=13, jitter=2.5))
    _, b = evaluate(gt, predict(images, anns, seed=14, jitter=2.5))
    pb = M.paired_bootstrap([a], [b])
    assert pb.lo < 0 < pb.hi, pb
    assert pb.mde > abs(pb.delta)


def test_rows_on_different_images_are_not_paired():
    images, anns = ground_truth(40, seed=15)
    gt = coco(images, anns)
    dets = predict(images, anns, seed=16, jitter=2.0)
    _, a = evaluate(gt, dets)
    _, b = evaluate(gt, dets, img_ids=[im["id"] for im in images[:30]])
    with pytest.raises(M.NotPaired, match="same images"):
        M.paired_bootstrap([a], [b])


def test_matches_file_round_trips_and_is_read_defensively(tmp_path):
    images, anns = ground_truth(20, seed=17)
    _, m = evaluate(coco(images, anns), predict(images, anns, seed=18, jitter=2.0))
    rec = M.save(tmp_path / "r.matches.npz", {"bbox": m})
    back = M.load(tmp_path / "r.matches.npz", rec["sha256"])["bbox"]
    assert M.ap_from_matches(back) == M.ap_from_matches(m)
    with pytest.raises(M.MatchesError, match="SHA-256"):
        M.load(tmp_path / "r.matches.npz", "0" * 64)
    # an index out of range (a hand-edited or foreign file) is refused, not used
    bad = dict(np.load(tmp_path / "r.matches.npz"))
    bad["bbox_det_img"] = bad["bbox_det_img"] + 10_000
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(M.MatchesError, match="out of range"):
        M.load(tmp_path / "bad.npz")
    # a pickled object array is never unpickled
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "obj.npz").write_bytes((tmp_path / "obj.npy").read_bytes())
    with pytest.raises(M.MatchesError):
        M.load(tmp_path / "obj.npz")


def test_a_real_job_keeps_its_matches_beside_the_result(pipeline_run):
    results, _, _ = pipeline_run
    path = results / "smoke" / "pipeline-test" / "table-1" / "tiny.json"
    res = read_result(path)
    assert res.matches is not None, "the job kept no per-image matches"
    groups = M.load(M.matches_path(path), res.matches["sha256"])
    assert set(groups) == {"segm", "bbox"} and res.matches["images"] == res.measurement.eval_images
    # the file reproduces the result's own COCO numbers (which mmdet rounds to 3 decimals of a fraction)
    for t, prefix in (("segm", "mask"), ("bbox", "box")):
        for suffix in ("AP", "AP50"):
            assert M.ap_from_matches(groups[t], suffix) == pytest.approx(res.measured[f"{prefix}_{suffix}"], abs=0.051)


def test_the_fast_resample_path_agrees_with_the_exact_one():
    """Resamples use float32 and a closed-form threshold count; on the same integer weights they give the
    exact path's AP per IoU threshold to within 1e-3 points."""
    images, anns = ground_truth(80, seed=19)
    _, m = evaluate(coco(images, anns), predict(images, anns, seed=20, jitter=2.5))
    w = np.random.default_rng(21).multinomial(80, np.full(80, 1 / 80), size=50).astype(float)
    exact, fast = M.ap_per_threshold(m, w, exact=True), M.ap_per_threshold(m, w, exact=False)
    assert np.nanmax(np.abs(exact - fast)) < 1e-3


def test_matches_follow_cocos_ap_at_100_detections_under_mmdets_max_dets():
    """mmdet's CocoMetric sets maxDets to [100, 300, 1000]; COCO's AP (stats[0]) is still taken at 100
    detections per image and category: the matches keep those 100, not 1000."""
    images, anns = ground_truth(20, seed=22)
    gt = coco(images, anns)
    dets = predict(images, anns, seed=23, jitter=2.0)
    crowded = images[0]["id"]
    for j in range(150):  # far more than 100 low-scored detections of one category on one image
        dets.append({"image_id": crowded, "category_id": 1, "bbox": [float(j % 90), 5.0, 10.0, 10.0],
                     "score": 0.9 - j * 1e-4})
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.maxDets = [100, 300, 1000]
        with M.capture() as got:
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
    assert M.ap_from_matches(got["bbox"]) == pytest.approx(100 * ev.stats[0], abs=1e-9)
