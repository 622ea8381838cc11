"""The mmdet model-zoo link (bench/zoo.py): metafiles of the installed mmdet wheel, read for real."""
from __future__ import annotations

import json

import yaml

from bench.resolve import mmdet_configs_dir


def _shipped(config: str) -> dict:
    """The metafile entry of ``config`` read here independently (yaml.safe_load of mmdet's own file)."""
    data = yaml.safe_load((mmdet_configs_dir() / config.split("/")[0] / "metafile.yml").read_text())
    return next(m for m in data["Models"] if m["Config"] == f"configs/{config}")


def test_show_names_the_zoo_checkpoint_of_the_mask_rcnn_row(cli):
    entry = _shipped("mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py")
    file_name = entry["Weights"].rsplit("/", 1)[-1]
    assert file_name == "mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth"
    out = cli("show", "csr-d2s/table-i").output
    line = next(ln for ln in out.splitlines() if "row 5 (mask-rcnn): mmdet model zoo" in ln)
    assert file_name in line and "released checkpoint" in line
    rows = {r["id"]: r for r in json.loads(cli("show", "csr-d2s/table-i", "--json").output)["rows"]}
    rel = rows["mask-rcnn"]["released_checkpoint"]
    assert rel["url"] == entry["Weights"] and rel["file_name"] == file_name and rel["exact"] is True
    assert rows["knet"]["released_checkpoint"] is None          # a bench:: config has no zoo checkpoint
    assert rows["polarmask"]["released_checkpoint"] is None     # a bench port has no zoo checkpoint


def test_weights_lists_the_released_checkpoint(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("BENCH_WEIGHTS", raising=False)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth").write_bytes(b"x")
    out = cli("weights", "csr-d2s/table-i", "--weights-dir", str(tmp_path / "w")).output
    block = out.split("mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth\n", 1)[1].split("\n\n")[0]
    assert "released checkpoint (mmdet model zoo" in block and f"found: {tmp_path / 'w'}" in block
    assert "MISSING: put it at" in out.split("solov2_r50_fpn_1x_coco_20220512_125858-a357fa23.pth\n", 1)[1]


def test_metafile_crosscheck_sets_published_beside_metafile():
    from bench.recipes import Catalogue
    from bench.zoo import metafile_crosscheck

    t = Catalogue(None).load("csr-d2s/table-i")
    checks = {(c["row"], c["metric"]): c for c in metafile_crosscheck(t)}
    assert set(checks) == {("solo", "mask_AP"), ("mask-rcnn", "mask_AP"), ("solov2", "mask_AP")}
    for row, config in (("mask-rcnn", "mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"), ("solo", "solo/solo_r50_fpn_1x_coco.py"),
                        ("solov2", "solov2/solov2_r50_fpn_1x_coco.py")):
        shipped = next(r["Metrics"]["mask AP"] for r in _shipped(config)["Results"] if "mask AP" in r["Metrics"])
        c = checks[(row, "mask_AP")]
        assert c["metafile"] == shipped and c["published"] == t.row(row).published["mask_AP"]
        assert c["agree"] is (abs(c["published"] - shipped) < 0.05) and c["config"] == f"configs/{config}"
    # the recipe's notes say these three are exactly mmdet's model-zoo numbers
    assert all(c["agree"] for c in checks.values())
    # a row of another schedule than the zoo model's is not compared (YOLACT: 48 epochs vs the zoo's 55)
    assert ("yolact", "mask_AP") not in checks
    other = {(c["row"], c["metric"]): c for c in metafile_crosscheck(Catalogue(None).load("sa-fpn/table-2"))}
    assert other[("mask-rcnn-r50", "box_AP")]["agree"] is False   # 37.2 published vs the zoo's 38.2
