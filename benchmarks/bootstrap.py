"""The paired bootstrap of a claim at COCO val2017 scale: 5,000 images, 80 categories, about 7 ground
truths and 100 detections an image, for two rows evaluated on the same images (1,000 resamples, AP, AP50
and AP75 from one pass). The matches are constructed (each ground truth found with probability 0.8 at an
IoU drawn uniformly from [0.4, 1], the rest of an image's 100 detections false positives), so this times
the arithmetic at the size of a real evaluation, not any model.

    .venv/bin/python benchmarks/bootstrap.py [--runs 3] [--out benchmarks/bootstrap.txt]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import matches as M  # noqa: E402


def constructed(seed: int, images: int = 5000, cats: int = 80, per_image: int = 100) -> M.Matches:
    rng = np.random.default_rng(seed)
    thr = np.linspace(0.5, 0.95, 10)
    n_gt = rng.poisson(7, images)
    det_cat, det_img, det_tp, score, gt = [], [], [], [], {}
    for i in range(images):
        cats_i = rng.integers(0, cats, n_gt[i])
        for c in cats_i:
            gt[(c, i)] = gt.get((c, i), 0) + 1
        found = cats_i[rng.random(n_gt[i]) < 0.8]
        iou = rng.uniform(0.4, 1.0, found.size)
        n_fp = max(0, per_image - found.size)
        det_cat += [found, rng.integers(0, cats, n_fp)]
        det_img += [np.full(found.size + n_fp, i)]
        det_tp += [((iou[:, None] >= thr) * (1 << np.arange(10))).sum(1), np.zeros(n_fp, int)]
        score += [rng.uniform(0.3, 1.0, found.size), rng.uniform(0.0, 0.7, n_fp)]
    cat, img, tp, sc = (np.concatenate(x) for x in (det_cat, det_img, det_tp, score))
    order = np.lexsort((-sc, cat))  # grouped by category, ranked by score within it
    keys = np.array(list(gt), dtype=np.int64).reshape(-1, 2)
    return M.Matches("segm", np.arange(images), thr, cat[order].astype(np.int32), img[order].astype(np.int32),
                     tp[order].astype(np.uint16), np.zeros(order.size, np.uint16), keys[:, 0].astype(np.int32),
                     keys[:, 1].astype(np.int32), np.array(list(gt.values()), np.int32), cats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "bootstrap.txt")
    args = ap.parse_args()
    a, b = constructed(0), constructed(1)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        found = M.paired_bootstraps([a], [b])
        times.append(time.perf_counter() - t)
    from bench.job import cpu_model

    lines = [f"# .venv/bin/python benchmarks/bootstrap.py --runs {args.runs}",
             f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_model()}, {os.cpu_count()} cores; "
             f"load average {os.getloadavg()[0]:.2f} when written",
             f"constructed matches: {a.n_images} images, {a.n_cats} categories, {a.det_cat.size} detections and "
             f"{int(a.gt_n.sum())} ground truths a row",
             f"paired bootstrap, 1,000 resamples, AP/AP50/AP75 of two rows: median {statistics.median(times):.1f} s "
             f"of {', '.join(f'{t:.1f}' for t in times)} s",
             *(f"  {k}: delta {pb.delta:+.2f} [{pb.lo:+.2f}, {pb.hi:+.2f}], MDE {pb.mde:.2f}" for k, pb in found.items())]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
