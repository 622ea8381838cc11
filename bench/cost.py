"""What a planned run will cost before it runs: minutes on this CPU at smoke scale.

Models differ by 20x in CPU time per iteration (a ResNet-50 SparseInst against an HTC with three R^3 loops),
so one formula for all rows mis-plans a table. The estimate of a run comes, in this order of preference, from

1. **your results**: finished runs at the same scale whose model has the same *signature*; their recorded
   ``phases_s`` and iterations;
2. **the calibration** shipped in ``bench/scales/costs/<scale>.yaml``: each signature of the recipes
   trained for a few iterations and tested on this project's CPU machine by ``benchmarks/smoke_costs.py``
   (its recorded output beside it);
3. **a formula** for a model neither knows: a ResNet-50 single-stage rate, x6 with an RoI head.

A signature is looked up exactly first (``module_signature``: every component type of the model, so an
AMF encoder with FEM differs from one without), then coarsely (``model_signature``: detector, head,
backbone, neck), in 1 then 2. Numbers (channels, loop counts) are not in either: rows that differ only
by them share an estimate.

Each estimate says which source it used; ``bench run --dry-run`` shows it per row.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import yaml

COSTS_DIR = Path(__file__).parent / "scales" / "costs"

#: the formula (source 3), measured here on 2 CPU cores for csr-d2s Table II rows (ResNet-50, batch 2):
#: ~1.1 s per iteration at 256x256 and ~0.55 s at 160x160, i.e. a fixed part plus a part growing with the
#: input area; plus ~30 s to evaluate, count FLOPs and time inference (benchmarks/smoke_table_ii.txt)
FORMULA_S_PER_ITER_FIXED = 0.2
FORMULA_S_PER_ITER_PER_PIXEL = 1.38e-5
FORMULA_FIXED_S = 30.0
#: RoI heads on the CPU (mmcv's RoIAlign backward, the box/mask heads): sbr-cnn Table 2's Mask R-CNN ran
#: at ~3.7 s per iteration at 160x160, ~6x a single-stage model of the same backbone
FORMULA_ROI_HEAD_FACTOR = 6.0


def _type(node: Any) -> Optional[str]:
    return node.get("type") if isinstance(node, dict) else None


def model_signature(model: Optional[dict]) -> str:
    """The parts of a model config that decide its cost: ``MaskRCNN/StandardRoIHead/ResNet-50/FPN``.
    Rows that only change a loss weight, a channel count or a flag share a signature."""
    if not isinstance(model, dict):
        return "?"
    bb = model.get("backbone") or {}
    backbone = _type(bb) or "?"
    if bb.get("depth"):
        backbone += f"-{bb['depth']}"
    neck = model.get("neck") or model.get("encoder")
    if isinstance(neck, list):
        neck_s = "+".join(_type(n) or "?" for n in neck)
    else:
        neck_s = _type(neck) or "-"
    head = (_type(model.get("roi_head")) or _type(model.get("bbox_head")) or _type(model.get("decode_head"))
            or _type(model.get("mask_head")) or "-")
    return "/".join([_type(model) or "?", head, backbone, neck_s])


def module_signature(model: Optional[dict]) -> str:
    """``model_signature`` plus a short hash of every component type in the model (its train/test
    settings and data preprocessor aside): ``SparseInst/-/ResNetV1d-50/AMFEncoder#3f9c1a``."""
    from bench.resolve import canonical_hash, iter_types

    if not isinstance(model, dict):
        return "?"
    parts = {k: v for k, v in model.items() if k not in ("train_cfg", "test_cfg", "data_preprocessor")}
    return f"{model_signature(model)}#{canonical_hash(sorted(set(iter_types(parts))), 6)}"


def sampled_rois(model: Optional[dict]) -> Optional[list[int]]:
    """The R-CNN stages' RoI samplers' ``num`` (train_cfg.rcnn; sorted, distinct), or None without one.
    Runs of one signature sampled at different counts (a scale's ``type_caps``) take different times."""
    found: set[int] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            smp = node.get("sampler")
            if isinstance(smp, dict) and isinstance(smp.get("num"), int):
                found.add(smp["num"])
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    train = model.get("train_cfg") if isinstance(model, dict) else None
    visit(train.get("rcnn") if isinstance(train, dict) else None)
    return sorted(found) or None


def _same_rois(entry: dict, rois: Optional[list[int]]) -> bool:
    """An entry measured at other sampled-RoI counts does not estimate this model; one that does not
    say (calibrations before the field) is taken as it is."""
    return "rois" not in entry or entry["rois"] == rois


def _coarse(sig: str) -> str:
    return sig.split("#", 1)[0]


def source_kind(source: str) -> str:
    """An estimate's source in one word: results | calibration | formula."""
    return "results" if source.startswith("your results") else source.split(" ", 1)[0]


@dataclass
class Rate:
    """Seconds a run of one signature takes: per training iteration, per test image, and fixed
    (building the Runner, checkpoints, FLOPs and speed measurement)."""
    s_per_iter: float
    test_s_per_image: float
    fixed_s: float
    input_size: Optional[list[int]]   # the size these were measured at
    source: str                       # e.g. "your results (same modules, n=3)", "calibration (...)", "formula (...)"

    @property
    def kind(self) -> str:
        return source_kind(self.source)

    def minutes(self, iterations: int, test_images: int, input_size: Optional[list[int]]) -> float:
        area = 1.0
        if input_size and self.input_size:
            area = (input_size[0] * input_size[1]) / (self.input_size[0] * self.input_size[1])
        return (iterations * self.s_per_iter * area + test_images * self.test_s_per_image * area
                + self.fixed_s) / 60


@lru_cache(maxsize=None)
def calibration(scale_name: str) -> dict[str, Any]:
    """``bench/scales/costs/<scale>.yaml``: {machine, measured_at, input_size, rates: {signature: {...}}}."""
    path = COSTS_DIR / f"{scale_name}.yaml"
    if not path.exists():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def results_rates(results_root: Path, scale_name: str) -> dict[str, list[dict]]:
    """Per signature, the timings of runs that finished at this scale under ``results_root``: each
    run's own ``runs/<key>/result.json`` (a run serving several rows counts once). Runs that resumed
    or only evaluated another run's training say nothing about training time and are left out."""
    out: dict[str, list[dict]] = {}
    runs = Path(results_root) / scale_name / "runs"
    for path in sorted(runs.glob("*/result.json")) if runs.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        m = rec.get("measurement") or {}
        phases = m.get("phases_s") or {}
        if (rec.get("status") != "done" or m.get("resumed_from") or m.get("trained_by")
                or not m.get("iterations") or "train" not in phases):
            continue
        model = (rec.get("config") or {}).get("model")
        sig = module_signature(model)
        out.setdefault(sig, []).append(dict(
            rois=sampled_rois(model),
            s_per_iter=phases["train"] / m["iterations"],
            test_s_per_image=phases.get("test", 0.0) / max(1, m.get("eval_images") or 1),
            fixed_s=phases.get("setup", 0.0) + phases.get("measure", 0.0),
            input_size=m.get("input_size")))
    return out


def _median(entries: list[dict], input_size: Optional[list[int]], source: str) -> Rate:
    med = {k: statistics.median(e[k] for e in entries) for k in ("s_per_iter", "test_s_per_image", "fixed_s")}
    return Rate(**med, input_size=input_size, source=source)


class CostModel:
    """Estimates for one plan: reads the results folder once."""

    def __init__(self, results_root: Path, scale_name: str):
        self.scale_name = scale_name
        self.measured = results_rates(results_root, scale_name)
        self.cal = calibration(scale_name)

    def _results(self, runs: list[dict], how: str) -> Rate:
        return _median(runs, runs[-1]["input_size"], f"your results ({how}, n={len(runs)})")

    def _calibrated(self, entries: list[dict], how: str) -> Rate:
        return _median(entries, self.cal.get("input_size"), f"calibration ({how})")

    def rate(self, model: Optional[dict], input_size: Optional[list[int]]) -> Rate:
        sig = module_signature(model)
        rois = sampled_rois(model)
        cal = {k: e for k, e in (self.cal.get("rates") or {}).items() if _same_rois(e, rois)}
        measured = {k: [r for r in rs if _same_rois(r, rois)] for k, rs in self.measured.items()}
        if measured.get(sig):
            return self._results(measured[sig], "same modules")
        if sig in cal:
            return self._calibrated([cal[sig]], "same modules")
        coarse = _coarse(sig)
        runs = [r for k, rs in measured.items() if _coarse(k) == coarse for r in rs]
        if runs:
            return self._results(runs, "same detector/head/backbone/neck")
        entries = [e for k, e in cal.items() if _coarse(k) == coarse]
        if entries:
            return self._calibrated(entries, "same detector/head/backbone/neck")
        h, w = input_size or (256, 256)
        per_iter = FORMULA_S_PER_ITER_FIXED + FORMULA_S_PER_ITER_PER_PIXEL * h * w
        if isinstance(model, dict) and model.get("roi_head"):
            per_iter *= FORMULA_ROI_HEAD_FACTOR
        return Rate(s_per_iter=per_iter, test_s_per_image=0.0, fixed_s=FORMULA_FIXED_S, input_size=None,
                    source="formula (model not calibrated)")

    def minutes(self, model: Optional[dict], iterations: int, test_images: int,
                input_size: Optional[list[int]]) -> tuple[float, str]:
        r = self.rate(model, input_size)
        return r.minutes(iterations, test_images, input_size), r.source


# ------------------------------------------------------------------------------------ paper scale
#: the formula at paper scale: mmdet's model zoo trains Mask R-CNN R-50-FPN 1x (12 epochs of COCO's
#: 118,287 train images, batch 16) in about 5.5 h on 8 V100s: 8 * 5.5 * 3600 / (12 * 118287) = 0.11
#: V100-seconds per training image at ~1333x800
V100_S_PER_IMAGE = 0.11
DATASET_TRAIN_IMAGES = {"coco": 118287, "cityscapes": 2975}


@dataclass
class PaperCost:
    gpu_hours: Optional[float]
    source: str


def paper_iterations(epochs: Optional[int], iters: Optional[int], dataset: str, total_batch: int,
                     repeat: int = 1) -> Optional[int]:
    """Total training iterations: the recipe's iterations, or epochs x images / total batch (with
    the config's RepeatDataset ``times``: mmdet's Cityscapes configs repeat the set 8 times an epoch)."""
    if iters:
        return int(iters)
    if epochs and dataset in DATASET_TRAIN_IMAGES:
        return int(epochs * math.ceil(DATASET_TRAIN_IMAGES[dataset] * max(1, repeat) / max(1, total_batch)))
    return None


def paper_cost(epochs: Optional[int], iters: Optional[int], dataset: str, total_batch: int, gpus: int,
               repeat: int = 1, preflight: Optional[dict] = None) -> PaperCost:
    """GPU-hours of a paper-scale run: from a preflight measured on a GPU (its s/iteration at the
    per-GPU batch, times the iterations, times the GPUs), else from the V100 formula above."""
    n = paper_iterations(epochs, iters, dataset, total_batch, repeat)
    if n is None:
        return PaperCost(None, "no schedule in the recipe (neither epochs nor iters)")
    if preflight and preflight.get("status") == "ok" and str(preflight.get("device", "")).startswith("cuda") \
            and preflight.get("s_per_iter"):
        h = preflight["s_per_iter"] * n * max(1, gpus) / 3600
        return PaperCost(round(h, 1), f"preflight on {preflight['device']}: {preflight['s_per_iter']} s/iteration "
                                      f"x {n} iterations x {max(1, gpus)} GPU(s)")
    h = V100_S_PER_IMAGE * n * total_batch / 3600
    return PaperCost(round(h, 1), f"formula: {V100_S_PER_IMAGE} V100-s per training image x {n} iterations x "
                                  f"batch {total_batch} (Mask R-CNN R-50 1x in mmdet's zoo; other models differ)")
