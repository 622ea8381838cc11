"""Ablation rows differ from their baseline in the labelled component only (isda Tables 1-2, csr-d2s
Table III; the other papers' tables are guarded in tests/models/). The resolved configs of the real
recipes (model + training setup) are diffed key by key."""
from __future__ import annotations

import pytest

from bench.recipes import Catalogue
from bench.resolve import row_config
from tests.configdiff import flat


def changed(table: str, row: str) -> set[str]:
    cat = Catalogue()
    t = cat.load(table)
    r = t.row(row)
    _, b = cat.find_row(r.baseline, t)
    a = flat({"model": row_config(r.model).to_dict()["model"], "train": r.train.model_dump()})
    c = flat({"model": row_config(b.model).to_dict()["model"], "train": b.train.model_dump()})
    return {k for k in set(a) | set(c) if a.get(k) != c.get(k)}


@pytest.mark.parametrize("table,row,component", [
    ("isda/table-1", "res-1-8", {"model.bbox_head.mask_feature_head.mask_stride"}),
    ("isda/table-1", "res-1-2", {"model.bbox_head.mask_feature_head.mask_stride"}),
    ("isda/table-2", "mp", {"model.bbox_head.mask_feature_head.mfr_positions"}),
    ("isda/table-2", "kp", {"model.bbox_head.kernel_positions"}),
    ("isda/table-2", "mp-kp", {"model.bbox_head.kernel_positions", "model.bbox_head.mask_feature_head.mfr_positions"}),
    ("csr-d2s/table-iii", "csr-128", {"model.neck.csr_channels"}),
    ("csr-d2s/table-iii", "csr-512", {"model.neck.csr_channels"}),
    ("csr-d2s/table-iii", "csr-1024", {"model.neck.csr_channels"}),
])
def test_ablation_row_changes_only_its_component(table, row, component):
    assert changed(table, row) == component
