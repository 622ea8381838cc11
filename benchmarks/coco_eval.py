"""COCO evaluation time: pycocotools (what bench uses, through mmdet's CocoMetric) against
faster-coco-eval, on a larger synthetic set with synthetic detections; checks the numbers agree.

    .venv/bin/pip install faster-coco-eval==1.8.0   # benchmark-only dependency
    .venv/bin/python benchmarks/coco_eval.py [--images 500]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np


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


def run(coco_cls, eval_cls, gt_file: str, dets: list, iou: str) -> tuple[float, list[float]]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_cls(gt_file)
        dt = gt.loadRes(dets)
        t0 = time.perf_counter()
        e = eval_cls(gt, dt, iou)
        e.evaluate()
        e.accumulate()
        e.summarize()
        wall = time.perf_counter() - t0
    return wall, [round(float(s), 6) for s in e.stats[:6]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=500)
    args = ap.parse_args()
    from bench.data import synth

    tmp = Path(tempfile.mkdtemp(prefix="bench-cocoeval-"))
    synth.generate(tmp / "d", synth.SynthSpec(train_images=1, val_images=args.images))
    gt_file = str(tmp / "d" / "annotations" / "instances_val.json")
    gt = json.loads(Path(gt_file).read_text())
    dets = detections(gt, np.random.default_rng(0))
    print(f"{args.images} images, {len(gt['annotations'])} instances, {len(dets)} detections")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    try:
        from faster_coco_eval import COCO as FCOCO
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        FCOCO = None
    for iou in ("bbox", "segm"):
        t_ref, s_ref = run(COCO, COCOeval, gt_file, dets, iou)
        line = f"{iou}: pycocotools {t_ref:6.2f} s  AP/AP50/AP75/APs/APm/APl {s_ref}"
        if FCOCO is not None:
            t_f, s_f = run(FCOCO, COCOeval_faster, gt_file, dets, iou)
            same = np.allclose(s_ref, s_f, atol=1e-6)
            line += f"\n      faster-coco-eval {t_f:6.2f} s ({t_ref / t_f:.1f}x)  identical to 1e-6: {same}"
            if not same:
                line += f"  {s_f}"
        else:
            line += "\n      faster-coco-eval: not installed"
        print(line)


if __name__ == "__main__":
    main()
