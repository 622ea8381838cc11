"""`bench audit`: architecture cells judged by the printed precision, at any scale; published numbers
checked against each other. Real models built on the CPU (the paper's configurations)."""
from __future__ import annotations

import json

import pytest

from bench.audit import agreement, decimals, printed_interval
from tests.conftest import TEST_RECIPES


def test_precision_rules():
    assert decimals(38.2) == 1 and decimals(44.17) == 2 and decimals(37.0) == 1 and decimals(44.17, 3) == 3
    assert printed_interval(38.2, 1) == pytest.approx((38.15, 38.25))
    assert printed_interval(37.9, 1, truncated=True) == pytest.approx((37.9, 38.0))
    assert agreement(38.2, 38.24, 1, False, 0.02) == "exact"
    assert agreement(38.2, 38.26, 1, False, 0.02) == "within"           # 0.2% off, inside 2%
    assert agreement(37.9, 37.98, 1, True, 0.02) == "exact"            # truncated: 37.98 prints as 37.9
    assert agreement(37.9, 37.86, 1, True, 0.0) == "outside"           # below a truncated count
    assert agreement(33.89, 46.37, 2, False, 0.02) == "outside"
    assert agreement(None, 1.0, 1, False, 0.02) == "published unknown"
    assert agreement(1.0, None, 1, False, 0.02) == "not measured"
    assert agreement(10.0, 10.4, 1, False, 0.5, relative=False) == "within"   # a recipe tolerance: metric units


def test_audit_csr_d2s_table_i(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    out = json.loads(cli("audit", "csr-d2s/table-i", "--json").stdout)
    cells = {(c["row"], c["metric"]): c for c in out["cells"]}
    for c in out["cells"]:
        assert {"table", "row", "metric", "published", "measured", "agreement"} <= set(c)
    assert cells[("solov2", "params_M")]["agreement"] == "outside"       # 46.37 M measured, 33.89 printed
    assert cells[("mask-rcnn", "params_M")]["agreement"] in ("exact", "within")
    assert cells[("polarmask", "params_M")]["agreement"] == "reference only"
    assert out["profiled"] > 0
    again = json.loads(cli("audit", "csr-d2s/table-i", "--json").stdout)
    assert again["profiled"] == 0 and again["cached"] == out["profiled"]
    assert again["cells"] == out["cells"]


def test_consistency_finds_a_model_printed_twice_with_other_numbers(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_RECIPES", str(TEST_RECIPES))
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    out = json.loads(cli("audit", "pipeline-test/table-1", "pipeline-test/table-2", "--json", "--no-flops").stdout)
    found = [f for f in out["consistency"] if f["kind"] == "repeated model, other numbers"]
    assert any(set(f["rows"]) == {"pipeline-test/table-1/tiny", "pipeline-test/table-2/same-as-tiny"}
               and "mask_AP: 30 vs 30.5" in f["detail"] for f in found), out["consistency"]
