"""`bench validate` passes on the shipped recipes and fails, naming file/row/field, on a bad one."""
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_validate_shipped_recipes(cli):
    res = cli("validate")
    assert "ok" in res.output


def test_validate_reports_bad_recipe(cli, tmp_path):
    root = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes" / "csr-d2s", root / "csr-d2s")
    p = root / "csr-d2s" / "table-ii.yaml"
    p.write_text(p.read_text().replace("mask_AP50: 56.4", "mask_AP05: 56.4"))
    res = cli("--recipes", str(root), "validate", expect=1)
    assert str(p) in res.output and "row 2 (id 'csr')" in res.output and "mask_AP05" in res.output


def test_validate_reports_bad_override(cli, tmp_path):
    root = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes" / "csr-d2s", root / "csr-d2s")
    p = root / "csr-d2s" / "table-i.yaml"
    p.write_text(p.read_text().replace("mmdet::solo/solo_r50_fpn_1x_coco.py", "mmdet::solo/solo_r5O_fpn_1x_coco.py"))
    res = cli("--recipes", str(root), "validate", expect=1)
    assert "row 3 (id 'solo'), field model" in res.output and "not found" in res.output
