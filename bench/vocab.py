"""The words bench uses everywhere, defined once: metric keys, row statuses, run statuses, scales.

Recipes, result files, the CLI and reports all speak this vocabulary; nothing else defines it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    description: str


_M = Metric
#: The one metric vocabulary of recipes and results (published and measured cells).
METRICS: dict[str, Metric] = {m.key: m for m in [
    _M("mask_AP", "mask AP", "%", True, "COCO mask AP@[.5:.95]"),
    _M("mask_AP50", "mask AP50", "%", True, "COCO mask AP at IoU 0.5"),
    _M("mask_AP75", "mask AP75", "%", True, "COCO mask AP at IoU 0.75"),
    _M("mask_APs", "mask APs", "%", True, "COCO mask AP, small objects (area < 32^2)"),
    _M("mask_APm", "mask APm", "%", True, "COCO mask AP, medium objects (32^2..96^2)"),
    _M("mask_APl", "mask APl", "%", True, "COCO mask AP, large objects (area > 96^2)"),
    _M("box_AP", "box AP", "%", True, "COCO box AP@[.5:.95]"),
    _M("box_AP50", "box AP50", "%", True, "COCO box AP at IoU 0.5"),
    _M("box_AP75", "box AP75", "%", True, "COCO box AP at IoU 0.75"),
    _M("box_APs", "box APs", "%", True, "COCO box AP, small objects"),
    _M("box_APm", "box APm", "%", True, "COCO box AP, medium objects"),
    _M("box_APl", "box APl", "%", True, "COCO box AP, large objects"),
    _M("params_M", "#params", "M", False, "trainable parameters, millions (exact: 12,846,080 is 12.84608)"),
    _M("gflops", "GFLOPs", "G", False, "floating point operations of one forward pass, 1e9"),
    _M("fps", "FPS", "img/s", True, "inference frames per second, batch 1"),
    _M("latency_ms", "latency", "ms", False, "inference time per image, batch 1"),
    _M("train_mem_GB", "train mem", "GB", False, "peak training memory per GPU"),
    _M("model_size_MB", "model size", "MB", False, "checkpoint size on disk"),
    _M("backbone_ms", "backbone", "ms", False, "backbone time per image"),
    _M("neck_head_ms", "neck+head", "ms", False, "neck and head time per image"),
    _M("postprocess_ms", "post-proc", "ms", False, "post-processing time per image"),
]}
METRIC_KEYS: tuple[str, ...] = tuple(METRICS)
#: metrics measured from COCO evaluation (the rest are measured by profiling or timing)
AP_METRICS: tuple[str, ...] = tuple(k for k in METRIC_KEYS if k.startswith(("mask_AP", "box_AP")))


class RowStatus(str, Enum):
    """What a recipe row is, before anything runs."""

    RUNNABLE = "runnable"              # every component of its config is registered: it can train
    MODEL_MISSING = "model missing"    # the config names a type no registry knows (not implemented yet)
    REFERENCE_ONLY = "reference only"  # a system outside mmdet and these papers: published numbers only
    REFUSED = "refused"                # the recipe asks for something bench never builds from data (an import
                                       # path as a type, a config outside the two roots, custom_imports)

    def __str__(self) -> str:
        return self.value


class RunStatus(str, Enum):
    """Where a row's run stands (the state of its result file or its job)."""

    PLANNED = "planned"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"      # not run: a result with the same hash exists (or the row cannot run)
    NOT_RUN = "not run"

    def __str__(self) -> str:
        return self.value


class Agreement(str, Enum):
    """How a measured cell compares with the published one."""

    WITHIN = "within tolerance"
    OUTSIDE = "outside tolerance"
    PUBLISHED_UNKNOWN = "published unknown"
    NOT_MEASURED = "not measured"
    NOT_COMPARABLE = "not comparable"

    def __str__(self) -> str:
        return self.value


class Verdict(str, Enum):
    """Whether an ablation row's published difference to its baseline holds in our measurements."""

    HELD = "held"                      # the interval excludes 0 and reaches the paper's delta
    HELD_SMALLER = "held, smaller"     # same sign as the paper, but the interval lies wholly short of its delta
    NOT_REPRODUCED = "not reproduced"  # the interval holds 0 and not the paper's delta
    REVERSED = "reversed"              # the interval excludes 0 on the other side
    INCONCLUSIVE = "inconclusive"      # the interval holds both 0 and the paper's delta (or nothing to test)

    def __str__(self) -> str:
        return self.value


SCALES: tuple[str, ...] = ("smoke", "paper")
