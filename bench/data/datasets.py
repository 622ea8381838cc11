"""Where each dataset's files are expected, and how a run points mmdet at them.

Three datasets: the embedded synthetic set (smoke scale), COCO 2017 and Cityscapes (paper scale),
the last two in the layouts mmdetection's own configs expect under ``--data-root``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DataError(FileNotFoundError):
    """A dataset root that lacks files; the message lists them."""


@dataclass(frozen=True)
class Layout:
    name: str
    dataset_type: str                  # the mmdet dataset class
    train_ann: str
    train_img: str
    val_ann: dict[str, str]            # eval split -> annotation file
    val_img: dict[str, str]            # eval split -> image folder
    classes: tuple[str, ...] | None = None   # None: the dataset class's own METAINFO


LAYOUTS: dict[str, Layout] = {
    "synth": Layout("synth", "CocoDataset", "annotations/instances_train.json", "train/",
                    {"val": "annotations/instances_val.json"}, {"val": "val/"},
                    classes=("circle", "rectangle", "triangle")),
    "coco": Layout("coco", "CocoDataset", "annotations/instances_train2017.json", "train2017/",
                   {"val2017": "annotations/instances_val2017.json",
                    "minival": "annotations/instances_val2017.json",
                    "test-dev": "annotations/image_info_test-dev2017.json"},
                   {"val2017": "val2017/", "minival": "val2017/", "test-dev": "test2017/"}),
    "cityscapes": Layout("cityscapes", "CityscapesDataset",
                         "annotations/instancesonly_filtered_gtFine_train.json", "leftImg8bit/train/",
                         {"cityscapes-val": "annotations/instancesonly_filtered_gtFine_val.json",
                          "cityscapes-test": "annotations/instancesonly_filtered_gtFine_test.json"},
                         {"cityscapes-val": "leftImg8bit/val/", "cityscapes-test": "leftImg8bit/test/"}),
}


def check_root(dataset: str, root: Path, eval_split: str) -> None:
    """Raise DataError naming every file or folder the run needs that ``root`` lacks."""
    layout = LAYOUTS[dataset]
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{dataset} data root {root} does not exist")
    if eval_split not in layout.val_ann:
        raise DataError(f"{dataset} has no evaluation split {eval_split!r} (known: {', '.join(layout.val_ann)})")
    needed = [layout.train_ann, layout.train_img, layout.val_ann[eval_split], layout.val_img[eval_split]]
    missing = [n for n in needed if not (root / n).exists()]
    if missing:
        raise DataError(f"{dataset} data root {root} lacks: " + ", ".join(str(root / m) for m in missing))


def content_fingerprint(root: Path) -> str:
    """A hash of everything in a (small) dataset folder: each file's path relative to the root, size and
    bytes. The smoke scale's run key names its synthetic set by this, so a different dataset in a
    folder of the same name (or the same folder regenerated differently) is never taken as done."""
    import hashlib

    root = Path(root)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"{root}: no dataset files")
    for p in files:
        rel = p.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + str(p.stat().st_size).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]
