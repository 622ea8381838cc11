"""bench.resolve.resolved_dict merges a row's overrides into its base config on plain dicts, without
mmengine's Config: it must give exactly what ``row_config(spec).to_dict()`` (mmengine) gives, key order and
container types included, for every row of the catalogue and for the merge's corner cases."""
from __future__ import annotations

import copy

import pytest
from mmengine.config import Config

from bench.recipes import Catalogue
from bench.resolve import _load_base, merge_overrides, resolved_dict, row_config


def _same(a, b) -> bool:
    """Equal, with the same types and the same key order all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _mmengine(base: dict, overrides: dict) -> dict:
    cfg = Config(copy.deepcopy(base))
    cfg.merge_from_dict(copy.deepcopy(overrides), allow_list_keys=True)
    return cfg.to_dict()


def test_every_catalogue_row_resolves_as_mmengine_resolves_it():
    rows = [(t, r) for t in Catalogue().tables() for r in t.rows if r.model is not None]
    assert len(rows) > 150
    for t, r in rows:
        assert _same(resolved_dict(r.model), row_config(r.model).to_dict()), f"{t.name} row {r.id}"
        # and against mmengine's own merge (row_config is built from resolved_dict)
        want = ({"module": Config({"module": dict(r.model.module)}).to_dict()["module"]} if r.model.module is not None
                else _mmengine(_load_base(r.model.config), r.model.overrides))
        assert _same(resolved_dict(r.model), want), f"{t.name} row {r.id}"


BASE = {"model": {"type": "MaskRCNN", "backbone": {"type": "ResNet", "depth": 50, "norm_cfg": {"type": "BN"},
                                                   "out_indices": (0, 1, 2, 3)},
                  "neck": {"type": "FPN", "in_channels": [256, 512, 1024, 2048]}},
        "train_pipeline": [{"type": "LoadImageFromFile"}, {"type": "Resize", "scale": (1333, 800)}],
        "optim_wrapper": {"optimizer": {"type": "SGD", "lr": 0.02}}, "max_epochs": 12}


@pytest.mark.parametrize("overrides", [
    {},
    {"model.backbone.depth": 101, "max_epochs": 24},                        # dotted keys
    {"model": {"backbone": {"depth": 101}}},                               # nested dicts
    {"model.backbone": {"_delete_": True, "type": "Swin", "embed": 96}},   # replace a subtree
    {"model.new_head": {"_delete_": True, "type": "X"}},                   # _delete_ on a new key: kept
    {"model.backbone.norm_cfg": {"type": "GN", "nested": {"_delete_": True, "a": 1}}},
    {"train_pipeline": {"1": {"scale": (640, 640)}}},                        # a list element by index
    {"train_pipeline.0": {"type": "LoadImageFromWebcam", "_delete_": True}},
    {"model.neck.in_channels": [128, 256]},                                # a list replaced whole
    {"model.backbone.out_indices": [1, 2]},
    {"optim_wrapper.optimizer": {"lr": 0.01}, "optim_wrapper.optimizer.momentum": 0.9},
    {"model.backbone.depth": {"a": 1}},                                    # dict onto an int: mmengine refuses
    {"train_pipeline": {"5": {"type": "Pad"}}},                            # index past the end: refused
])
def test_merge_corner_cases_equal_mmengine(overrides):
    base = copy.deepcopy(BASE)
    given = copy.deepcopy(overrides)
    try:
        want = _mmengine(base, overrides)
    except Exception as e:  # noqa: BLE001 - the same refusal, same type
        with pytest.raises(type(e)):
            merge_overrides(base, overrides)
        return
    assert _same(merge_overrides(base, overrides), want)
    assert base == BASE and overrides == given   # neither argument changed
