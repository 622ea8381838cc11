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
    ("csr-d2s/table-i", ["yolact", "solo", "knet", "mask-rcnn"]),
    ("sbr-cnn/table-2", ["mask-1x", "htc"]),
])
def test_baseline_params_within_0_1_percent(cli, table, row_ids):
    rows = _profile(cli, table, "--no-flops")
    for rid in row_ids:
        r = rows[rid]
        assert r["status"] == "runnable" and abs(r["params_rel_diff"]) < 1e-3, r


def test_unbuildable_rows_say_why(cli):
    rows = _profile(cli, "csr-d2s/table-i", "--no-flops")
    assert rows["polarmask"]["params_M"] is None and "not part of mmdetection" in rows["polarmask"]["note"]


def test_flops_with_uncounted_ops_listed(cli, monkeypatch):
    from tests.conftest import TEST_RECIPES

    monkeypatch.setenv("BENCH_RECIPES", str(TEST_RECIPES))
    rows = _profile(cli, "pipeline-test/table-1")
    tiny = rows["tiny"]
    assert tiny["gflops"] > 0 and tiny["input_hw"] == [800, 1333]
    assert "uncounted ops" in tiny["note"]
    assert rows["missing"]["note"].startswith("not implemented: NoSuchNeck")
