"""The embedded synthetic dataset: deterministic, valid COCO, all size ranges, overlaps."""
from __future__ import annotations

import hashlib
import json

from pycocotools.coco import COCO

from bench.data import synth


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic(tmp_path):
    spec = synth.SynthSpec(train_images=6, val_images=3)
    a = synth.generate(tmp_path / "a", spec)
    b = synth.generate(tmp_path / "b", spec)
    assert a == b
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    other = synth.generate(tmp_path / "c", synth.SynthSpec(train_images=6, val_images=3, seed=1))
    assert _digest(tmp_path / "c") != _digest(tmp_path / "a") and other["key"] != a["key"]


def test_reuse_and_refuse_foreign_folder(tmp_path):
    spec = synth.SynthSpec(train_images=2, val_images=1)
    synth.generate(tmp_path / "d", spec)
    stamp = (tmp_path / "d" / "manifest.json").stat().st_mtime_ns
    synth.generate(tmp_path / "d", spec)
    assert (tmp_path / "d" / "manifest.json").stat().st_mtime_ns == stamp
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("mine")
    import pytest

    with pytest.raises(FileExistsError):
        synth.generate(tmp_path / "foreign", spec)


def test_valid_coco_with_all_size_ranges_and_overlap(synth_data):
    coco = COCO(str(synth_data / "annotations" / "instances_train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(synth.CLASSES)
    anns = coco.loadAnns(coco.getAnnIds())
    areas = [a["area"] for a in anns]
    assert min(areas) < 32 ** 2 and max(areas) > 96 ** 2
    assert any(32 ** 2 <= a <= 96 ** 2 for a in areas)
    for a in anns[:50]:
        m = coco.annToMask(a)
        assert m.sum() > 0 and abs(int(m.sum()) - a["area"]) <= 1
    # overlap: some instance's visible area is smaller than its drawn shape, so some boxes intersect
    def inter(a, b):
        ax, ay, aw, ah = a["bbox"]
        bx, by, bw, bh = b["bbox"]
        return max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    per_img = {}
    for a in anns:
        per_img.setdefault(a["image_id"], []).append(a)
    assert any(inter(x, y) > 0 for v in per_img.values() for i, x in enumerate(v) for y in v[i + 1:])
    manifest = json.loads((synth_data / "manifest.json").read_text())
    assert manifest["splits"]["train"]["images"] == 16 and manifest["splits"]["val"]["images"] == 8
