"""The embedded default dataset: a deterministic, COCO-format instance-segmentation set.

Coloured shapes (circle, rectangle, triangle) on textured backgrounds. Classes are told apart by shape
and by hue family, so a detector trained from scratch on 2 CPU cores learns them in a few hundred
iterations; sizes span COCO's small (< 32^2 px), medium and large (> 96^2 px) area ranges; shapes may
overlap, in which case the later one occludes the earlier, and each instance's polygons describe only
its visible part (holes and splits included, from the visible mask's contours).

The same arguments always produce byte-identical files (numpy's PCG64 seeded generator, OpenCV's
deterministic rasteriser, PNG). ``manifest.json`` records the generator version and arguments.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

GENERATOR_VERSION = 2
CLASSES = ("circle", "rectangle", "triangle")
#: hue family per class (OpenCV hue, 0..180): red-ish, green-ish, blue-ish
_HUES = (0, 60, 120)


@dataclass(frozen=True)
class SynthSpec:
    train_images: int = 96
    val_images: int = 24
    width: int = 256
    height: int = 256
    max_objects: int = 6
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({"v": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _shape_polygon(rng: np.random.Generator, cls: int, cx: float, cy: float, size: float) -> np.ndarray:
    """Outline of one shape as an (N, 2) float array."""
    if cls == 0:  # circle / ellipse
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        ax, ay = size / 2, size / 2 * rng.uniform(0.75, 1.0)
        pts = np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], 1)
    elif cls == 1:  # rotated rectangle
        w, h = size, size * rng.uniform(0.5, 1.0)
        a = rng.uniform(0, np.pi)
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        pts = corners @ rot.T + [cx, cy]
    else:  # triangle
        a0 = rng.uniform(0, 2 * np.pi)
        t = a0 + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.25, 0.25, 3)
        pts = np.stack([cx + size / 2 * np.cos(t), cy + size / 2 * np.sin(t)], 1)
    return pts


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2

    base = rng.uniform(60, 190, size=3)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = (gx / w * rng.uniform(-40, 40) + gy / h * rng.uniform(-40, 40))[..., None]
    noise = cv2.GaussianBlur(rng.normal(0, 18, (h, w, 3)).astype(np.float32), (0, 0), 2.0)
    img = base[None, None, :] + grad + noise
    return np.clip(img, 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator, cls: int) -> tuple[int, int, int]:
    import cv2

    hue = (_HUES[cls] + rng.integers(-12, 13)) % 180
    hsv = np.uint8([[[hue, rng.integers(150, 256), rng.integers(150, 256)]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _sizes(rng: np.random.Generator, n: int, w: int, h: int) -> np.ndarray:
    """Object diameters in pixels, drawn so that COCO's small (< 32^2 px area), medium and large
    (> 96^2 px) ranges all occur; the bands are absolute (COCO's thresholds are), clamped to the image."""
    short = min(w, h)
    bands = rng.choice(3, size=n, p=[0.35, 0.4, 0.25])
    lo = np.minimum(np.array([14.0, 40.0, 112.0]), 0.7 * short)
    hi = np.minimum(np.array([30.0, 96.0, 170.0]), 0.95 * short)
    return rng.uniform(lo[bands], np.maximum(hi[bands], lo[bands] + 1))


def _mask_to_polygons(mask: np.ndarray) -> list[list[float]] | None:
    """Outer contours of a visible mask as COCO polygons; None if the mask has a hole (a polygon
    list cannot express one: COCO fills every polygon)."""
    import cv2

    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is not None and (hierarchy[0][:, 3] >= 0).any():
        return None
    polys = []
    for c in contours:
        if len(c) >= 3 and cv2.contourArea(c) >= 4:
            polys.append([float(v) for v in c.reshape(-1)])
    return polys


def _make_image(rng: np.random.Generator, spec: SynthSpec):
    """One image and its annotations; redrawn (same generator, so still deterministic) whenever an
    object would end up with a hole, which polygons cannot describe."""
    while True:
        out = _try_image(rng, spec)
        if out is not None:
            return out


def _try_image(rng: np.random.Generator, spec: SynthSpec):
    import cv2
    from pycocotools import mask as mask_utils

    h, w = spec.height, spec.width
    img = _background(rng, h, w)
    n = int(rng.integers(2, spec.max_objects + 1))
    sizes = _sizes(rng, n, w, h)
    owner = np.full((h, w), -1, np.int32)  # which object is visible at each pixel
    objects = []
    for i, size in enumerate(sizes):
        cls = int(rng.integers(0, len(CLASSES)))
        cx = rng.uniform(size / 2, w - size / 2) if size < w else w / 2
        cy = rng.uniform(size / 2, h - size / 2) if size < h else h / 2
        pts = np.round(_shape_polygon(rng, cls, cx, cy, size)).astype(np.int32)
        shape_mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(shape_mask, [pts], 1)
        colour = _colour(rng, cls)
        cv2.fillPoly(img, [pts], colour)
        # a little shading inside the shape so masks are not flat colour fields
        shade = rng.normal(0, 8, (h, w, 1))
        img = np.where(shape_mask[..., None] > 0, np.clip(img + shade, 0, 255), img).astype(np.uint8)
        owner[shape_mask > 0] = i
        objects.append(cls)
    anns = []
    for i, cls in enumerate(objects):
        visible = owner == i
        area = int(visible.sum())
        if area < 16:
            continue  # fully (or almost fully) occluded: not an instance any more
        polys = _mask_to_polygons(visible)
        if polys is None:
            return None
        if not polys:
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        x0, y0, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
        # area and box as COCO computes them from the polygons (what the evaluator will see)
        anns.append({"category_id": cls + 1, "segmentation": polys, "area": float(mask_utils.area(rle)),
                     "bbox": [x0, y0, bw, bh], "iscrowd": 0})
    return img, anns


def _write_split(root: Path, split: str, count: int, spec: SynthSpec, rng: np.random.Generator) -> dict:
    import cv2

    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for idx in range(count):
        img, anns = _make_image(rng, spec)
        name = f"{split}_{idx:05d}.png"
        cv2.imwrite(str(root / split / name), img)
        image_id = idx + 1
        images.append({"id": image_id, "file_name": name, "width": spec.width, "height": spec.height})
        for a in anns:
            a.update(id=len(annotations) + 1, image_id=image_id)
            annotations.append(a)
    coco = {
        "info": {"description": f"bench synthetic shapes ({split})", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)],
    }
    (root / "annotations").mkdir(exist_ok=True)
    with open(root / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(coco, f)
    return {"images": len(images), "instances": len(annotations)}


def _expected_files(manifest: dict) -> set[str] | None:
    """The files a generated set holds (relative paths), from its manifest; None if it says too little."""
    try:
        spec = manifest["spec"]
        names = {"manifest.json", "annotations/instances_train.json", "annotations/instances_val.json"}
        for split, n in (("train", spec["train_images"]), ("val", spec["val_images"])):
            names |= {f"{split}/{split}_{i:05d}.png" for i in range(int(n))}
        return names
    except (KeyError, TypeError, ValueError):
        return None


def _only_generated(out: Path, manifest: dict) -> str | None:
    """None if ``out`` holds nothing but the files of the set its manifest describes; else the first
    other file or folder found (which rewriting would destroy)."""
    expected = _expected_files(manifest)
    if expected is None:
        return "manifest.json (unreadable spec)"
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_dir() and not p.is_symlink():
            if rel not in ("train", "val", "annotations"):
                return rel
        elif rel not in expected or p.is_symlink():
            return rel
    return None


def _read_manifest(path: Path) -> dict | None:
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return m if isinstance(m, dict) else None


def generate(out: Path, spec: SynthSpec = SynthSpec(), force: bool = False) -> dict:
    """Write the dataset to ``out`` (atomically: built beside it, then renamed). Returns the manifest.

    If ``out`` already holds a dataset made with the same spec, it is reused unless ``force``. Nothing
    this call did not create is ever deleted: a folder holding another synthetic set, or anything else,
    is refused (FileExistsError); ``force`` rewrites a folder only if it holds nothing but the files of
    the set its manifest describes.
    """
    out = Path(out)
    manifest_path = out / "manifest.json"
    old = _read_manifest(manifest_path) if manifest_path.exists() else None
    if old is not None and not force and old.get("key") == spec.key():
        return old
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; choose another --out / --data-root")
    if out.exists() and any(out.iterdir()):
        if old is None:
            raise FileExistsError(f"{out}: exists and is not a bench synthetic dataset; choose another --out")
        if old.get("key") != spec.key():
            raise FileExistsError(
                f"{out}: holds another synthetic dataset (key {old.get('key')!r}, this run needs {spec.key()!r}); "
                "bench does not delete it: choose another --out / --data-root, or remove it yourself")
        stray = _only_generated(out, old)
        if stray is not None:
            raise FileExistsError(f"{out}: holds {stray!r}, which the synthetic set does not: --force would delete it; "
                                  "bench refuses. Move it away or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    aside = None
    try:
        rng = np.random.default_rng(spec.seed)
        stats = {split: _write_split(tmp, split, n, spec, rng)
                 for split, n in (("train", spec.train_images), ("val", spec.val_images))}
        manifest = {"generator": "bench.data.synth", "version": GENERATOR_VERSION, "key": spec.key(),
                    "spec": asdict(spec), "classes": list(CLASSES), "splits": stats}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if force and out.exists() and any(out.iterdir()):
            # checked above to hold only generated files; moved aside first, so a failure loses nothing
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, aside / "set")
        try:
            os.replace(tmp, out)  # an empty folder is replaced; a non-empty one refuses (ENOTEMPTY)
        except OSError:
            now = _read_manifest(manifest_path)
            if now is not None and now.get("key") == spec.key():  # another process made the same set meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
                return now
            raise FileExistsError(f"{out}: appeared while the set was generated and holds something else; "
                                  "nothing was deleted") from None
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)  # the old copy of this very set, moved aside by this call
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and (aside / "set").exists() and not out.exists():
            os.replace(aside / "set", out)
            shutil.rmtree(aside, ignore_errors=True)
        raise
    return manifest


def default_dir(spec: SynthSpec = SynthSpec()) -> Path:
    """Where the synthetic set of ``spec`` lives unless told otherwise (under ``$BENCH_DATA``)."""
    env = os.environ.get("BENCH_DATA")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bench" / "data"
    return base / f"synth-{spec.key()}"


def spec_from_manifest(root: Path) -> SynthSpec | None:
    try:
        return SynthSpec(**json.loads((Path(root) / "manifest.json").read_text())["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
