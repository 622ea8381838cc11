"""`bench profile`: measured trainable params of the papers' mmdet baselines and layers vs published."""
import json

import pytest


def _profile(cli, table, *extra):
    return {p["row"]: p for p in json.loads(cli("profile", table, "--json", *extra).output)}


def test_layer_counts_exact(cli):
    rows = _profile(cli, "sbr-cnn/table-1", "--no-flops")
    assert len(rows) == 8
    for r in rows.values():
        assert r["params_M"] == pytest.approx(r["published_params_M"], abs=5e-7), r


@pytest.mark.parametrize("table,row_ids", [
    ("csr-d2s/table-i", ["yolact", "polarmask", "solo", "knet", "mask-rcnn"]),
    ("sbr-cnn/table-2", ["mask-1x", "htc"]),
])
def test_baseline_params_within_0_1_percent(cli, table, row_ids):
    rows = _profile(cli, table, "--no-flops")
    for rid in row_ids:
        r = rows[rid]
        assert r["status"] == "runnable" and abs(r["params_rel_diff"]) < 1e-3, r


def test_unbuildable_rows_say_why(cli):
    rows = _profile(cli, "sa-fpn/table-1", "--no-flops")
    assert rows["masklab"]["params_M"] is None and "not part of mmdetection" in rows["masklab"]["note"]


def test_flops_with_uncounted_ops_listed(cli, monkeypatch):
    """Per row, the JSON carries the ops left uncounted (mmcv's RoIAlign here), the forward traced, the
    input size, the padded size and where the size came from (the row's test pipeline)."""
    from tests.conftest import TEST_RECIPES

    monkeypatch.setenv("BENCH_RECIPES", str(TEST_RECIPES))
    rows = _profile(cli, "pipeline-test/table-1")
    tiny = rows["tiny"]
    assert tiny["gflops"] > 0 and tiny["input_hw"] == [800, 1333]
    assert "uncounted ops" in tiny["note"]
    assert rows["missing"]["note"].startswith("not implemented: NoSuchNeck")
    assert tiny["uncounted_ops"].get("prim::PythonOp.RoIAlignFunction", 0) > 0
    assert "aten::add" not in tiny["uncounted_ops"]  # element-wise: left out by convention, said in the note
    assert tiny["flops_mode"] == "tensor"
    assert tiny["padded_hw"] == [800, 1344] and "test pipeline Resize" in tiny["input_source"]
    assert "input 800x1333 (padded to 800x1344)" in tiny["note"]
    same = rows["tiny-nan"]  # differs in training only: counted once
    assert same["gflops"] == tiny["gflops"] and "FLOPs of row 'tiny'" in same["note"]


def test_input_size_is_the_rows_test_size():
    """amf-sparseinst Table 10 tests at short side 608 / 640 (long side <= 864), SOLO at 852x512, YOLACT at
    550x550, Cityscapes at 1024x2048: the size each row's test pipeline resizes to, not 800x1333."""
    from bench.profile import input_hw
    from bench.recipes import Catalogue

    t = Catalogue().load("amf-sparseinst/table-10")
    got = {r.id: input_hw(r) for r in t.rows if r.model is not None and r.model.config is not None}
    assert got["sparseinst-r50-608"][0] == (608, 864)
    assert got["amf-sparseinst-r50d-dcn-640"][0] == (640, 864)
    assert got["solo-r50-512"][0] == (512, 852)
    assert got["yolact-r50-550"][0] == (550, 550)
    assert got["city-sparseinst-1024x2048"][0] == (1024, 2048)
    assert got["condinst-r50-800"][0] == (800, 1333)
    assert "ResizeShortestEdge" in got["sparseinst-r50-608"][1]


def test_yolact_is_not_padded_beyond_its_preprocessor():
    """YOLACT's data preprocessor has no pad_size_divisor: 550x550 stays 550x550 (not 576x576)."""
    from mmdet.registry import MODELS
    from mmengine.config import Config

    from bench.profile import padded
    from bench.resolve import config_file, register_all

    register_all()
    cfg = Config.fromfile(str(config_file("mmdet::yolact/yolact_r50_1xb8-55e_coco.py")))
    pre = MODELS.build(cfg.model.data_preprocessor)

    class M:
        data_preprocessor = pre

    assert padded(M(), (550, 550)) == (550, 550)
    assert padded(M(), (800, 1333)) == (800, 1333)


def test_a_second_profile_builds_nothing(cli, monkeypatch, tmp_path):
    import bench.profile

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    first = _profile(cli, "csr-d2s/table-iii", "--no-flops")

    def no_build(*a, **k):
        raise AssertionError("profile_table ran: the second call should be served from the cache")

    monkeypatch.setattr(bench.profile, "profile_table", no_build)
    assert _profile(cli, "csr-d2s/table-iii", "--no-flops") == first
