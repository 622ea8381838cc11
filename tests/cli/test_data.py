"""`bench data synth` and `bench data check`."""
import json


def test_data_synth(cli, tmp_path):
    out = tmp_path / "s"
    res = cli("data", "synth", "--out", str(out), "--train-images", "3", "--val-images", "2", "--size", "128")
    assert "train 3 images" in res.output and "val 2 images" in res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["spec"]["width"] == 128


def test_data_synth_refuses_foreign_folder(cli, tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "keep.txt").write_text("x")
    res = cli("data", "synth", "--out", str(tmp_path / "f"), expect=1)
    assert "not a bench synthetic dataset" in res.output


def test_data_check_names_missing_files(cli, tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_text("{}")
    (root / "val2017").mkdir()
    res = cli("data", "check", "coco", str(root), expect=1)
    assert "instances_train2017.json" in res.output and "train2017" in res.output
    assert "instances_val2017.json" not in res.output.split("lacks:")[1]
    res = cli("data", "check", "cityscapes", str(tmp_path / "nope"), expect=1)
    assert "does not exist" in res.output
