"""Profile: build each row's model on the CPU (no weights, no data) and measure what needs no training.

Trainable parameters (the papers' "#params": requires_grad after ``model.train()``, so frozen backbone
stages are excluded) and FLOPs of one forward pass at the row's input size, next to the published
values. Layer-only rows build the single module and count all of its parameters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from bench.recipes import Row, Table
from bench.resolve import register_all, row_config, row_status
from bench.vocab import RowStatus

DEFAULT_HW = (800, 1333)


@dataclass
class Profile:
    table: str
    position: int
    row: str
    label: str
    status: str
    params_M: Optional[float] = None
    published_params_M: Optional[float] = None
    params_rel_diff: Optional[float] = None
    gflops: Optional[float] = None
    published_gflops: Optional[float] = None
    gflops_rel_diff: Optional[float] = None
    input_hw: Optional[tuple[int, int]] = None
    note: str = ""


def input_hw(row: Row) -> tuple[tuple[int, int], str]:
    """(H, W) for FLOPs: the model's input_size, else the recipe's 'WxH' input size, else 800x1333."""
    if row.model and row.model.input_size:
        h, w = row.model.input_size
        return (h, w), "recipe model.input_size"
    s = row.train.input_size or ""
    m = re.search(r"(\d+)\s*[x×]\s*(\d+)", s)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        return (min(a, b), max(a, b)), f"train.input_size {s!r} (landscape)"
    return DEFAULT_HW, "default 800x1333 (the paper states no size)"


def _rel(measured: Optional[float], published: Optional[float]) -> Optional[float]:
    if measured is None or published in (None, 0):
        return None
    return (measured - published) / published


def build(row: Row):
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict

    from bench.plan import _strip_pretrained

    cfg = row_config(row.model).to_dict()
    if row.model.module is not None:
        return MODELS.build(ConfigDict(cfg["module"])), True
    model_cfg = cfg["model"]
    _strip_pretrained(model_cfg)
    return MODELS.build(ConfigDict(model_cfg)), False  # attribute access (cfg.rpn) as mmdet expects


def model_flops(model, hw: tuple[int, int]) -> tuple[Optional[float], str]:
    import torch
    from mmdet.structures import DetDataSample

    from bench.job import measure_flops

    h, w = (-(-hw[0] // 32) * 32, -(-hw[1] // 32) * 32)  # padded to 32 like mmdet's data preprocessor
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                         batch_input_shape=(h, w), scale_factor=(1.0, 1.0), img_id=0))
    data = {"inputs": torch.zeros(1, 3, h, w), "data_samples": [sample]}
    with torch.no_grad():
        return measure_flops(model, data)


def profile_table(table: Table, flops: bool = True) -> list[Profile]:
    register_all()
    out = []
    for row in table.rows:
        st, reason = row_status(row)
        p = Profile(table.name, row.position, row.id, row.label, str(st),
                    published_params_M=row.published.get("params_M"), published_gflops=row.published.get("gflops"))
        out.append(p)
        if st is not RowStatus.RUNNABLE:
            p.note = reason
            continue
        try:
            model, layer_only = build(row)
        except Exception as e:  # noqa: BLE001 - a row that does not build says why
            p.note = f"does not build: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            continue
        if layer_only:
            n = sum(q.numel() for q in model.parameters())
            p.note = "layer alone: all parameters (weights + biases)"
        else:
            model.train()
            n = sum(q.numel() for q in model.parameters() if q.requires_grad)
        p.params_M = n / 1e6
        p.params_rel_diff = _rel(p.params_M, p.published_params_M)
        if flops and not layer_only:
            hw, why = input_hw(row)
            p.input_hw = hw
            g, note = model_flops(model, hw)
            p.gflops = round(g, 2) if g is not None else None
            p.gflops_rel_diff = _rel(p.gflops, p.published_gflops)
            p.note = "; ".join(x for x in (p.note, f"input {hw[0]}x{hw[1]} (padded to a multiple of 32) from {why}",
                                           note) if x)
        del model
    return out
