"""`bench report --format model-index`: OpenMMLab's model-index format, written from a fixture result set and
read back, beside mmdet's own shipped index, through bench's reader and through the `model-index` package."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.report.modelindex import read_model_index
from bench.resolve import mmdet_configs_dir
from bench.results import Measurement, Result, result_path, write_result

TABLE = "csr-d2s/table-ii"
FIXTURE_DEVICE = "test fixture (not a measurement)"
MEASURED = {"mask_AP": 12.3, "mask_AP50": 25.0, "box_AP": 14.1, "params_M": 43.5, "gflops": 210.25, "fps": 9.5,
            "latency_ms": 105.3}


def _fixture(root: Path, row: str, scale: str) -> Result:
    """A valid paper- or smoke-scale result labelled as a test fixture (numbers invented for the test)."""
    m = Measurement(scale=scale, dataset="coco", eval_split="val2017", iterations=90000, epochs=12, batch_size=16, gpus=8,
                    input_size=[800, 1333], pretrained=True, seed=0, device=FIXTURE_DEVICE,
                    speed_protocol="fixture protocol")
    res = Result(status="done", table=TABLE, row=row, label=row, run_key=f"fixture-{row}", config_hash="fixturehash",
                 measured=MEASURED, measurement=m, finished_at="2026-01-01T10:00:00+00:00", git_commit="fixturecommit",
                 config={"model": {"type": "MaskRCNN"}}, published={"mask_AP": 99.9})
    write_result(result_path(root, scale, TABLE, row), res)
    return res


def _report(results: Path, out: Path, *args: str, expect: int = 0) -> str:
    from bench.cli import main

    r = CliRunner().invoke(main, ["--results", str(results), "report", TABLE, "--format", "model-index", "--out",
                                  str(out), *args], catch_exceptions=False)
    assert r.exit_code == expect, r.output
    return r.output


def test_export_round_trips_through_the_reader_as_mmdets_own_index_does(tmp_path):
    from bench.recipes import Catalogue

    row = Catalogue(None).load(TABLE).rows[0].id
    _fixture(tmp_path / "r", row, "paper")
    out = _report(tmp_path / "r", tmp_path / "rep", "--scale", "paper")
    index = tmp_path / "rep" / "paper" / "model-index" / "model-index.yml"
    assert f"model index: {index}" in out and not list((tmp_path / "rep").rglob("*.html"))
    ours = read_model_index(index)
    shipped = read_model_index(mmdet_configs_dir().parent / "model-index.yml")
    assert len(shipped) > 500 and len(ours) == 1
    ref = next(m for m in shipped if m["Config"] == "configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py")
    m = ours[0]
    for entry in (ref, m):      # the fields OpenMMLab's metafiles carry, read the same way from both
        assert entry["Name"] and entry["_collection"]["Name"] == entry["In Collection"]
        assert {"Task", "Dataset", "Metrics"} <= set(entry["Results"][0])
        assert isinstance(entry["Metadata"]["Epochs"], int)
        inf = entry["Metadata"]["inference time (ms/im)"][0]
        assert {"value", "hardware", "backend", "batch size", "mode", "resolution"} <= set(inf)
    assert ref["Weights"].startswith("https://") and "Weights" not in m   # the fixture's run left no checkpoint
    meta = m["Metadata"]
    assert meta["Parameters"] == 43_500_000 and meta["FLOPs"] == 210_250_000_000 and meta["Epochs"] == 12
    assert meta["Batch Size"] == 16 and meta["Training Resources"] == f"8x {FIXTURE_DEVICE}"
    assert meta["inference time (ms/im)"][0]["value"] == 105.3 and meta["inference time (ms/im)"][0]["mode"] == "FP32"
    assert meta["Provenance"] == {"scale": "paper", "run key": f"fixture-{row}", "commit": "fixturecommit",
                                  "config hash": "fixturehash", "dataset": "coco", "eval split": "val2017", "seed": 0,
                                  "finished": "2026-01-01T10:00:00+00:00", "source": f"bench run ({TABLE} row {row})"}
    tasks = {r["Task"]: r for r in m["Results"]}
    assert tasks["Instance Segmentation"]["Metrics"] == {"mask AP": 12.3, "mask AP50": 25.0}
    assert tasks["Object Detection"]["Metrics"] == {"box AP": 14.1} and tasks["Object Detection"]["Dataset"] == "COCO"
    assert "99.9" not in Path(m["_metafile"]).read_text()          # measured values only, never the published
    cfg = Path(m["_metafile"]).parent / m["Config"]
    assert json.loads(cfg.read_text()) == {"model": {"type": "MaskRCNN"}}


def test_export_passes_the_model_index_package_check(tmp_path):
    modelindex = pytest.importorskip("modelindex.load_model_index")
    from bench.recipes import Catalogue

    _fixture(tmp_path / "r", Catalogue(None).load(TABLE).rows[0].id, "paper")
    _report(tmp_path / "r", tmp_path / "rep", "--scale", "paper")
    mi = modelindex.load(str(tmp_path / "rep" / "paper" / "model-index" / "model-index.yml"))
    assert mi.check(silent=True) == []
    (model,) = mi.models
    assert model.metadata.parameters == 43_500_000 and model.metadata.epochs == 12
    assert {r.task for r in model.results} == {"Instance Segmentation", "Object Detection"}
    shipped = modelindex.load(str(mmdet_configs_dir().parent / "model-index.yml"))
    # mmdet's wheel ships its metafiles without their README files, and two DINO results without Metrics: the only
    # errors the package finds in mmdet's own index
    errors = shipped.check(silent=True)
    assert len(shipped.models) > 500 and all("README" in e or "dino" in e for e in errors)


def test_a_smoke_scale_export_is_refused_unless_asked_for(tmp_path):
    from bench.recipes import Catalogue

    _fixture(tmp_path / "r", Catalogue(None).load(TABLE).rows[0].id, "smoke")
    out = _report(tmp_path / "r", tmp_path / "rep", expect=1)
    assert "not comparable" in out and "--smoke" in out and not (tmp_path / "rep").exists()
    _report(tmp_path / "r", tmp_path / "rep", "--smoke")
    (m,) = read_model_index(tmp_path / "rep" / "smoke" / "model-index" / "model-index.yml")
    assert m["Metadata"]["Provenance"]["scale"] == "smoke" and "not comparable" in m["Metadata"]["Provenance"]["note"]
