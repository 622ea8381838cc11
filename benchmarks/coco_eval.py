"""COCO evaluation time: pycocotools (the reference, what mmdet's CocoMetric calls) against hotcoco and
faster-coco-eval, on a larger synthetic set with synthetic detections; checks the numbers agree.

Two timings per evaluator and IoU type, each the median of --repeats runs:
  native  the evaluator on its own objects: COCOeval(gt, dt) + evaluate + accumulate + summarize
          (gt loaded and predictions loadRes'd beforehand, untimed), mmdet's params (maxDets 100/300/1000)
  job     what a bench job does (bench.evaluators.evaluate): from CocoMetric's pycocotools gt and loadRes,
          convert, evaluate, accumulate, the 12 stats by pycocotools' summarize, and the per-image matches
          bench.matches keeps (pycocotools: its own COCOeval plus bench.matches.from_cocoeval)
Stats are compared with pycocotools' to 1e-9, the job path's matches array by array.

    .venv/bin/pip install -e '.[dev]'      # hotcoco, faster-coco-eval
    /work/helpers/quiet.sh .venv/bin/python benchmarks/coco_eval.py --images 1000 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import sys
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.evaluators import quiet  # noqa: E402  (silences an evaluator's prints and warnings)


def detections(gt: dict, rng: np.random.Generator) -> list[dict]:
    """Per ground-truth instance a jittered copy (box and mask) plus a few false positives."""
    from pycocotools import mask as mu

    by_img = {im["id"]: im for im in gt["images"]}
    dets = []
    for a in gt["annotations"]:
        im = by_img[a["image_id"]]
        h, w = im["height"], im["width"]
        rle = mu.merge(mu.frPyObjects(a["segmentation"], h, w))
        m = mu.decode(rle)
        shift = rng.integers(-3, 4, size=2)
        m = np.roll(m, tuple(shift), axis=(0, 1))
        r = mu.encode(np.asfortranarray(m))
        r["counts"] = r["counts"].decode()
        x, y, bw, bh = a["bbox"]
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"] if rng.random() > 0.1 else 1,
                     "bbox": [x + shift[1], y + shift[0], bw, bh], "segmentation": r, "score": float(rng.random())})
    for im in gt["images"]:
        for _ in range(3):
            x, y = rng.uniform(0, im["width"] - 20), rng.uniform(0, im["height"] - 20)
            m = np.zeros((im["height"], im["width"]), np.uint8)
            m[int(y):int(y) + 16, int(x):int(x) + 16] = 1
            r = mu.encode(np.asfortranarray(m))
            r["counts"] = r["counts"].decode()
            dets.append({"image_id": im["id"], "category_id": int(rng.integers(1, 4)), "bbox": [x, y, 16, 16],
                         "segmentation": r, "score": float(rng.random() * 0.5)})
    return dets


def as_mmdet(dets: list[dict], iou: str) -> list[dict]:
    """What mmdet's CocoMetric hands loadRes: bbox results without masks, segm results without boxes."""
    drop = "segmentation" if iou == "bbox" else "bbox"
    return [{k: v for k, v in d.items() if k != drop} for d in dets]


def native(name: str, gt_file: str, dets: list, iou: str) -> tuple[float, np.ndarray]:
    """One native evaluation: seconds, stats."""
    with quiet():
        if name == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            gt = COCO(gt_file)
            dt = gt.loadRes(as_mmdet(dets, iou))
            t0 = time.perf_counter()
            e = COCOeval(gt, dt, iou)
            e.params.maxDets = [100, 300, 1000]
        elif name == "faster-coco-eval":
            from faster_coco_eval import COCO, COCOeval_faster

            gt = COCO(gt_file)
            dt = gt.loadRes(as_mmdet(dets, iou))
            t0 = time.perf_counter()
            e = COCOeval_faster(gt, dt, iou, print_function=lambda *a, **k: None)
            e.params.maxDets = [100, 300, 1000]
        else:
            import hotcoco

            gt = hotcoco.COCO(gt_file)
            dt = gt.loadRes(as_mmdet(dets, iou))
            t0 = time.perf_counter()
            e = hotcoco.COCOeval(gt, dt, iou)
            e.params.max_dets = [100, 300, 1000]
        e.evaluate()
        e.accumulate()
        e.summarize()
        wall = time.perf_counter() - t0
    return wall, np.asarray(e.stats, np.float64)


def job(name: str, gt_file: str, dets: list, iou: str):
    """One evaluation as a bench job does it: seconds, Evaluation."""
    from pycocotools.coco import COCO

    from bench import evaluators as E

    with quiet():
        gt = COCO(gt_file)
        dt = gt.loadRes(as_mmdet(dets, iou))
    E._GT_CACHE.clear()  # the ground truth's conversion counts (a job converts it once per evaluation)
    t0 = time.perf_counter()
    ev = E.evaluate(name, gt, dt, iou, E.mmdet_params(gt, iou))
    return time.perf_counter() - t0, ev


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from bench import evaluators as E
    from bench.data import synth
    from bench.matches import FIELDS

    tmp = Path(tempfile.mkdtemp(prefix="bench-cocoeval-"))
    synth.generate(tmp / "d", synth.SynthSpec(train_images=1, val_images=args.images))
    gt_file = str(tmp / "d" / "annotations" / "instances_val.json")
    gt = json.loads(Path(gt_file).read_text())
    dets = detections(gt, np.random.default_rng(0))
    names = [n for n in E.KNOWN if E.version(n) is not None]
    print(f"{args.images} images, {len(gt['annotations'])} instances, {len(dets)} detections; "
          f"median of {args.repeats} runs; mmdet's params (maxDets 100/300/1000)")
    print("versions: " + ", ".join(f"{n} {E.version(n)}" for n in E.KNOWN))
    for iou in ("bbox", "segm"):
        rows = {}
        for n in names:
            nat = [native(n, gt_file, dets, iou) for _ in range(args.repeats)]
            jb = [job(n, gt_file, dets, iou) for _ in range(args.repeats)]
            rows[n] = (statistics.median(t for t, _ in nat), nat[0][1], statistics.median(t for t, _ in jb), jb[0][1])
        _, ref_nat, _, ref_job = rows["pycocotools"]
        t_ref_nat, t_ref_job = rows["pycocotools"][0], rows["pycocotools"][2]
        print(f"{iou}: pycocotools AP/AP50/AP75/APs/APm/APl {[round(float(s), 6) for s in ref_job.stats[:6]]}")
        for n in names:
            t_nat, s_nat, t_job, ev = rows[n]
            d_nat = float(np.abs(s_nat - ref_nat).max()) if n != "pycocotools" else 0.0
            d_job = float(np.abs(ev.stats - ref_job.stats).max())
            if ev.matches is None:
                m = "no per-image matches"
            else:
                same = all(np.array_equal(getattr(ev.matches, f), getattr(ref_job.matches, f)) for f in FIELDS)
                m = "matches identical" if same else "MATCHES DIFFER"
            print(f"  {n:<17} native {t_nat:6.3f} s ({t_ref_nat / t_nat:5.1f}x, stats max |diff| {d_nat:.1e})   "
                  f"job {t_job:6.3f} s ({t_ref_job / t_job:5.1f}x, stats max |diff| {d_job:.1e}, {m})")


if __name__ == "__main__":
    main()
