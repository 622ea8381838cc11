"""Profile: build each row's model on the CPU (no weights, no data) and measure what needs no training.

Trainable parameters (the papers' "#params": requires_grad after ``model.train()``, so frozen backbone
stages are excluded) and FLOPs of one inference forward pass at the row's test size, next to the
published values. Layer-only rows build the single module and count all of its parameters.

FLOPs (bench/flops.py): mmengine's FlopAnalyzer with handles for mmcv's deformable convs; each row says
which forward was traced, at which input size and from where that size came, and which ops stay uncounted.

The input size, in this order:

1. the row's ``model.input_size`` (H, W), where the recipe states the size the paper's FLOPs were counted at;
2. the size the row's own test pipeline resizes to (``test_dataloader``): mmdet ``Resize(scale=(W, H),
   keep_ratio=True)`` gives the landscape box H x W (the usual "1333x800" convention: short side H, long
   side W), ``keep_ratio=False`` exactly H x W, ``ResizeShortestEdge(scale=S, max_size=L)`` S x L;
3. a 'WxH' size in the recipe's ``train.input_size`` text (its 'test:' part where it has one), landscape;
4. 800 x 1333.

The input is then padded like the model's data preprocessor (``pad_size_divisor``, 32 in most configs).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from bench.recipes import Row, Table
from bench.resolve import register_all, resolved_dict, row_config, row_status
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
    input_hw: Optional[tuple[int, int]] = None        # the test size (H, W) before padding
    padded_hw: Optional[tuple[int, int]] = None       # what the model saw
    input_source: str = ""                            # where input_hw came from
    flops_mode: str = ""                              # which forward was traced (bench/flops.py)
    uncounted_ops: dict[str, int] = field(default_factory=dict)   # compute ops with no FLOP count
    deform_gflops: Optional[float] = None             # of gflops, mmcv's deformable ops (bench/flops.py)
    note: str = ""


def _landscape(a: int, b: int) -> tuple[int, int]:
    return min(a, b), max(a, b)


def _pipeline(cfg: dict, key: str) -> Optional[list]:
    ds = (cfg.get(key) or {}).get("dataset")
    while isinstance(ds, dict) and "pipeline" not in ds and isinstance(ds.get("dataset"), dict):
        ds = ds["dataset"]  # dataset wrappers
    pl = ds.get("pipeline") if isinstance(ds, dict) else None
    return pl if isinstance(pl, list) else None


def pipeline_hw(pipeline: list) -> Optional[tuple[tuple[int, int], str]]:
    """(H, W) that a test pipeline resizes to, and the transform it came from; None when no fixed size."""
    for t in pipeline:
        if not isinstance(t, dict):
            continue
        typ = str(t.get("type", "")).split(".")[-1]
        if typ == "Resize" and t.get("scale") is not None:
            s = t["scale"]
            w, h = (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))  # mmdet 3: scale = (w, h)
            if t.get("keep_ratio", False):
                return _landscape(w, h), f"test pipeline Resize scale {tuple(s) if not isinstance(s, int) else s}, keep_ratio (landscape box)"
            return (h, w), f"test pipeline Resize to {w}x{h} (W x H)"
        if typ == "ResizeShortestEdge" and isinstance(t.get("scale"), int) and t.get("max_size"):
            return (int(t["scale"]), int(t["max_size"])), \
                f"test pipeline ResizeShortestEdge short side {t['scale']}, long side <= {t['max_size']}"
        if typ == "FixShapeResize" and t.get("width") and t.get("height"):
            return (int(t["height"]), int(t["width"])), f"test pipeline FixShapeResize {t['width']}x{t['height']}"
        if typ in ("TestTimeAug", "MultiScaleFlipAug"):
            return None
    return None


def text_hw(text: Optional[str]) -> Optional[tuple[int, int]]:
    """A 'WxH' size in a train.input_size text: the one after 'test' where the text names one."""
    if not text:
        return None
    m = re.search(r"test[^0-9]*?(\d+)\s*[x×]\s*(\d+)", text) or re.search(r"(\d+)\s*[x×]\s*(\d+)", text)
    return _landscape(int(m.group(1)), int(m.group(2))) if m else None


def input_hw(row: Row, cfg: Optional[dict] = None) -> tuple[tuple[int, int], str]:
    """(H, W) for FLOPs and where it came from (see the module docstring for the order)."""
    if row.model and row.model.input_size:
        h, w = row.model.input_size
        return (h, w), "recipe model.input_size"
    if cfg is None and row.model is not None and row.model.config is not None:
        cfg = resolved_dict(row.model)   # read only
    for key in ("test_dataloader", "val_dataloader"):
        pl = _pipeline(cfg or {}, key)
        if pl:
            got = pipeline_hw(pl)
            if got:
                return got
            break
    hw = text_hw(row.train.input_size)
    if hw:
        return hw, f"train.input_size {row.train.input_size!r} (landscape)"
    return DEFAULT_HW, "default 800x1333 (neither the recipe nor the test pipeline states a size)"


def _rel(measured: Optional[float], published: Optional[float]) -> Optional[float]:
    if measured is None or published in (None, 0):
        return None
    return (measured - published) / published


def build(row: Row, cfg: Optional[dict] = None):
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict

    from bench.plan import _strip_pretrained

    cfg = cfg if cfg is not None else row_config(row.model).to_dict()
    if row.model.module is not None:
        return MODELS.build(ConfigDict(cfg["module"])), True
    model_cfg = cfg["model"]
    _strip_pretrained(model_cfg)
    return MODELS.build(ConfigDict(model_cfg)), False  # attribute access (cfg.rpn) as mmdet expects


def padded(model, hw: tuple[int, int]) -> tuple[int, int]:
    """``hw`` padded as the model's data preprocessor pads (``pad_size_divisor``)."""
    d = int(getattr(getattr(model, "data_preprocessor", None), "pad_size_divisor", 1) or 1)
    return -(-hw[0] // d) * d, -(-hw[1] // d) * d


def model_flops(model, hw: tuple[int, int], padded_hw: Optional[tuple[int, int]] = None):
    """bench.flops.FlopCount of one forward at ``hw`` (padded like the model's preprocessor)."""
    import torch
    from mmdet.structures import DetDataSample

    from bench.flops import count_flops

    (ih, iw), (h, w) = hw, padded_hw or padded(model, hw)
    sample = DetDataSample(metainfo=dict(img_shape=(ih, iw), ori_shape=(ih, iw), pad_shape=(h, w),
                                         batch_input_shape=(h, w), scale_factor=(1.0, 1.0), img_id=0))
    data = {"inputs": torch.zeros(1, 3, h, w), "data_samples": [sample]}
    return count_flops(model, data)


def profile_table(table: Table, flops: bool = True) -> list[Profile]:
    from bench.resolve import canonical_hash

    register_all()
    out = []
    counted: dict[str, tuple[str, Any]] = {}  # model config + input size -> (first row, FlopCount): counted once
    for row in table.rows:
        st, reason = row_status(row)
        p = Profile(table.name, row.position, row.id, row.label, str(st),
                    published_params_M=row.published.get("params_M"), published_gflops=row.published.get("gflops"))
        out.append(p)
        if st is not RowStatus.RUNNABLE:
            p.note = reason
            continue
        try:
            cfg: dict[str, Any] = row_config(row.model).to_dict()
            model, layer_only = build(row, cfg)
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
        if not layer_only:
            hw, why = input_hw(row, cfg)
            p.input_hw, p.padded_hw, p.input_source = hw, padded(model, hw), why
            if flops:
                key = canonical_hash({"model": cfg.get("model"), "hw": hw, "padded": p.padded_hw})
                first, c = counted.get(key, (None, None))
                if c is None:
                    c = model_flops(model, hw, p.padded_hw)
                    counted[key] = (row.id, c)
                p.gflops = round(c.gflops, 2) if c.gflops is not None else None
                p.gflops_rel_diff = _rel(p.gflops, p.published_gflops)
                p.flops_mode, p.uncounted_ops = c.mode, dict(sorted(c.uncounted.items()))
                p.deform_gflops = round(c.deform_gflops, 2) if c.deform_gflops else None
                size = f"input {hw[0]}x{hw[1]}" + (f" (padded to {p.padded_hw[0]}x{p.padded_hw[1]})"
                                                   if p.padded_hw != tuple(hw) else "") + f" from {why}"
                same = f"FLOPs of row {first!r} (the same model config and input)" if first else ""
                p.note = "; ".join(x for x in (p.note, size, same, c.note) if x)
        del model
    return out
