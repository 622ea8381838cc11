"""Real-format dataset roots for tests and preflight: COCO 2017 and mmdet's converted Cityscapes,
in their exact on-disk layouts, with small made-up content.

Nothing in bench assumes these roots; they exist so the paper path (real dataset classes, real
annotation formats, real category ids) can be exercised on a machine without the datasets.

* COCO 2017 (``--layout coco``): ``annotations/instances_{train,val}2017.json`` with COCO's 80
  categories under their real, non-contiguous ids (1..90 with ten gaps) and names; polygon masks
  for ordinary instances and uncompressed RLE (``counts`` a list) for ``iscrowd`` regions, as COCO
  has them; JPEGs at COCO-like sizes (640x480, 480x640, 640x427, 500x375) in ``train2017/`` and
  ``val2017/``; ``annotations/image_info_test-dev2017.json`` (images and categories, no
  annotations, as COCO ships it) with its images in ``test2017/``.
* Cityscapes as mmdet's ``tools/dataset_converters/cityscapes.py`` writes it (``--layout
  cityscapes``): ``leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` at
  2048x1024 and ``annotations/instancesonly_filtered_gtFine_{train,val}.json`` whose masks are
  compressed RLE (``counts`` a string), category ids those of cityscapesScripts' instance classes
  (24..33 without the two ignored in evaluation, 29 and 30), image and annotation ids from 0,
  ``iscrowd`` set for group regions.

Both are deterministic for a given seed and written atomically (built beside ``out``, renamed).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

LAYOUT_VERSION = 1
# COCO 2017's category ids: 1..90 without 12, 26, 29, 30, 45, 66, 68, 69, 71, 83
COCO_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
COCO_SIZES = ((640, 480), (480, 640), (640, 427), (500, 375))   # (width, height)
# cityscapesScripts' labels with hasInstances and not ignoreInEval (mmdet's converter keeps these)
CITYSCAPES_CATEGORIES = ((24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"),
                         (31, "train"), (32, "motorcycle"), (33, "bicycle"))
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}


def coco_category_names() -> tuple[str, ...]:
    """COCO's 80 names in id order (mmdet's CocoDataset lists them in that order)."""
    from mmdet.datasets import CocoDataset

    names = tuple(CocoDataset.METAINFO["classes"])
    assert len(names) == len(COCO_IDS) == 80
    return names


def _canvas(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth background (compresses well, so 2048x1024 PNGs stay small)."""
    import cv2

    small = rng.uniform(40, 200, size=(max(2, h // 64), max(2, w // 64), 3)).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _blob(rng: np.random.Generator, w: int, h: int, lo: float, hi: float) -> np.ndarray:
    """A random convex-ish polygon inside the image, as an (N, 2) int array."""
    size = rng.uniform(lo, hi) * min(w, h)
    cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
    n = int(rng.integers(5, 11))
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = size / 2 * rng.uniform(0.6, 1.0, n)
    pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    return np.clip(np.round(pts), 0, [w - 1, h - 1]).astype(np.int32)


def _visible_masks(rng, img, w, h, n, lo, hi):
    """Draw ``n`` blobs (later ones occlude earlier ones); return each one's visible mask."""
    import cv2

    owner = np.full((h, w), -1, np.int32)
    for i in range(n):
        pts = _blob(rng, w, h, lo, hi)
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [pts], 1)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.fillPoly(img, [pts], colour)
        owner[m > 0] = i
    return [(owner == i) for i in range(n)]


def _outer_polygons(mask: np.ndarray) -> list[list[float]]:
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[float(v) for v in c.reshape(-1)] for c in contours if len(c) >= 3 and cv2.contourArea(c) >= 4]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: column-major run lengths starting with a run of zeros, ``counts`` a list."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _publish(out: Path, build) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        manifest = out / "manifest.json"
        if not manifest.exists() or json.loads(manifest.read_text()).get("generator") != "bench.data.layouts":
            raise FileExistsError(f"{out}: exists and was not written by `bench data synth --layout`; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        info = build(tmp)
        (tmp / "manifest.json").write_text(json.dumps(info, indent=2))
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)   # our own previous fixture (manifest checked above)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


# ------------------------------------------------------------------------------------------ COCO
def write_coco(out: Path, train_images: int = 8, val_images: int = 4, test_images: int = 2, seed: int = 0) -> dict:
    """A COCO 2017 root (see the module docstring). Returns its manifest."""
    import cv2
    from pycocotools import mask as mask_utils

    names = coco_category_names()
    categories = [{"supercategory": "object", "id": i, "name": n} for i, n in zip(COCO_IDS, names)]

    def build(root: Path) -> dict:
        rng = np.random.default_rng(seed)
        stats = {}
        next_image = [100]
        next_ann = [1000]
        for split, count in (("train2017", train_images), ("val2017", val_images), ("test2017", test_images)):
            (root / split).mkdir(parents=True)
            images, anns = [], []
            for _ in range(count):
                image_id = next_image[0] = next_image[0] + int(rng.integers(1, 50))
                w, h = COCO_SIZES[int(rng.integers(len(COCO_SIZES)))]
                img = _canvas(rng, h, w)
                n = int(rng.integers(2, 6))
                crowd = split != "test2017" and rng.uniform() < 0.5
                masks = _visible_masks(rng, img, w, h, n + int(crowd), 0.15, 0.45)
                name = f"{image_id:012d}.jpg"
                cv2.imwrite(str(root / split / name), img, [cv2.IMWRITE_JPEG_QUALITY, 85])
                images.append({"license": 1, "file_name": name, "height": h, "width": w, "id": image_id,
                               "date_captured": "2013-11-14 16:28:13",
                               "coco_url": f"http://images.cocodataset.org/{split}/{name}",
                               "flickr_url": ""})
                if split == "test2017":
                    continue
                for k, m in enumerate(masks):
                    if m.sum() < 32:
                        continue
                    is_crowd = crowd and k == len(masks) - 1
                    if is_crowd:
                        seg = _uncompressed_rle(m)
                        rle = mask_utils.frPyObjects(seg, h, w)
                    else:
                        seg = _outer_polygons(m)
                        if not seg:
                            continue
                        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
                    next_ann[0] += 1
                    anns.append({"segmentation": seg, "area": float(mask_utils.area(rle)),
                                 "iscrowd": int(is_crowd), "image_id": image_id,
                                 "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],
                                 "category_id": int(COCO_IDS[int(rng.integers(len(COCO_IDS)))]),
                                 "id": next_ann[0]})
            stats[split] = {"images": len(images), "instances": sum(not a["iscrowd"] for a in anns),
                            "crowd": sum(a["iscrowd"] for a in anns)}
            header = {"info": {"description": "bench fixture in the COCO 2017 layout (made-up content)",
                               "version": "1.0", "year": 2017},
                      "licenses": [{"id": 1, "name": "fixture", "url": ""}], "images": images}
            (root / "annotations").mkdir(exist_ok=True)
            if split == "test2017":
                ann_name = "image_info_test-dev2017.json"
                body = header | {"categories": categories}   # COCO ships test-dev without annotations
            else:
                ann_name = f"instances_{split}.json"
                body = header | {"annotations": anns, "categories": categories}
            (root / "annotations" / ann_name).write_text(json.dumps(body))
        return {"generator": "bench.data.layouts", "layout": "coco", "version": LAYOUT_VERSION, "seed": seed,
                "splits": stats}

    return _publish(out, build)


# ------------------------------------------------------------------------------------ Cityscapes
def write_cityscapes(out: Path, train_images: int = 4, val_images: int = 2, seed: int = 0,
                     size: tuple[int, int] = (2048, 1024)) -> dict:
    """A converted Cityscapes root as mmdet's converter leaves it (see the module docstring)."""
    import cv2
    from pycocotools import mask as mask_utils

    w, h = size

    def build(root: Path) -> dict:
        rng = np.random.default_rng(seed)
        stats = {}
        for split, count in (("train", train_images), ("val", val_images)):
            images, anns = [], []
            for idx in range(count):
                city = CITIES[split][idx % len(CITIES[split])]
                stem = f"{city}_{idx:06d}_{19 + idx:06d}"
                folder = root / "leftImg8bit" / split / city
                folder.mkdir(parents=True, exist_ok=True)
                img = _canvas(rng, h, w)
                n = int(rng.integers(3, 8))
                masks = _visible_masks(rng, img, w, h, n, 0.05, 0.3)
                cv2.imwrite(str(folder / f"{stem}_leftImg8bit.png"), img)
                image_id = len(images)   # the converter numbers images (and annotations) from 0
                images.append({"file_name": f"{city}/{stem}_leftImg8bit.png", "height": h, "width": w,
                               "segm_file": f"{city}/{stem}_gtFine_labelIds.png", "id": image_id})
                for k, m in enumerate(masks):
                    if m.sum() < 64:
                        continue
                    rle = mask_utils.encode(np.asarray(m, dtype=np.uint8, order="F")[:, :, None])[0]
                    area = mask_utils.area(rle)
                    bbox = mask_utils.toBbox(rle)
                    rle["counts"] = rle["counts"].decode()
                    cat = CITYSCAPES_CATEGORIES[int(rng.integers(len(CITYSCAPES_CATEGORIES)))][0]
                    anns.append({"iscrowd": int(k == 0 and idx % 2 == 1), "category_id": cat,
                                 "bbox": bbox.tolist(), "area": area.tolist(), "segmentation": rle,
                                 "image_id": image_id, "id": 0})
            for i, a in enumerate(anns):
                a["id"] = i
            body = {"images": images, "categories": [{"id": i, "name": n} for i, n in CITYSCAPES_CATEGORIES],
                    "annotations": anns}
            (root / "annotations").mkdir(exist_ok=True)
            (root / "annotations" / f"instancesonly_filtered_gtFine_{split}.json").write_text(json.dumps(body))
            stats[split] = {"images": len(images), "instances": sum(not a["iscrowd"] for a in anns),
                            "crowd": sum(a["iscrowd"] for a in anns)}
        return {"generator": "bench.data.layouts", "layout": "cityscapes", "version": LAYOUT_VERSION,
                "seed": seed, "size": [w, h], "splits": stats}

    return _publish(out, build)
