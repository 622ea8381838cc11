"""Plan: resolve each row to the full mmdet config it will train, hash it, and decide what runs.

The full config is: the row's model config (base + overrides), the recipe's training setup written
into it (optimizer, lr, epochs, lr steps, batch), the dataset (synthetic or real, under --data-root),
and the scale overlay (``bench/scales/<scale>.yaml``). Its hash, with the scale, the dataset and the
code version, is the *run key*: rows with equal run keys (the same model in several tables) share one
training, and a row whose result file carries the current run key is skipped.
"""
from __future__ import annotations

import copy
import functools
import importlib.metadata
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from bench import __version__
from bench.cost import CostModel
from bench.data.datasets import LAYOUTS, check_root
from bench.recipes import Row, Table
from bench.resolve import canonical_hash, iter_types, model_code_fingerprint, resolved_dict, row_status
from bench.weights import PRETRAINED_INITS
from bench.results import ResultReadError, read_result, result_path, run_dir
from bench.vocab import RowStatus

SCALES_DIR = Path(__file__).resolve().parent / "scales"
_DATASET_WRAPPERS = ("RepeatDataset", "ClassBalancedDataset", "MultiImageMixDataset", "ConcatDataset")
_RESIZES = ("Resize", "RandomResize", "RandomChoiceResize")


class PlanError(ValueError):
    pass


@dataclass(frozen=True)
class Scale:
    name: str
    description: str
    dataset: Optional[str]
    input_size: Optional[list[int]]
    iterations: Optional[int]
    warmup_iters: Optional[int]
    batch_size: Optional[int]
    gpus: Optional[int]
    workers: int
    pretrained: bool
    lr_scaling: str
    checkpoint_interval: Optional[int]
    speed_images: int
    seed: int
    synth: Optional[dict] = None   # smoke: the synthetic set's spec (train_images, val_images, size)
    caps: Optional[dict] = None    # smoke: upper bounds on sampling/proposal counts in model train/test cfgs
    # smoke: tighter caps for models that hold one of the listed module types (the heads whose per-RoI cost
    # dominates a smoke run): [{types: [...], caps: {...}, why: "..."}]. Not part of the run key by itself:
    # what it changes is in the config, which the key hashes, so rows it does not touch keep their keys.
    type_caps: Optional[list] = None

    @classmethod
    def load(cls, name: str) -> "Scale":
        """A shipped scale by name (smoke, paper), or a scale file by path: a variant of one of them
        (its ``name`` must be smoke or paper, which decides where results go and how they are labelled)."""
        path = Path(name) if name.endswith((".yaml", ".yml")) else SCALES_DIR / f"{name}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in SCALES_DIR.glob("*.yaml"))
            raise PlanError(f"unknown scale {name!r} (known: {', '.join(known)}, or a path to a scale YAML)")
        data = yaml.safe_load(path.read_text())
        try:
            scale = cls(**data)
        except TypeError as e:
            raise PlanError(f"{path}: {e}") from None
        if scale.name not in ("smoke", "paper"):
            raise PlanError(f"{path}: field name: must be 'smoke' or 'paper', got {scale.name!r}")
        for i, rule in enumerate(scale.type_caps or []):
            where = f"{path}: field type_caps[{i}]"
            if not isinstance(rule, dict) or set(rule) - {"types", "caps", "why"}:
                raise PlanError(f"{where}: must be a mapping with types, caps and why")
            types, caps = rule.get("types"), rule.get("caps")
            if not (isinstance(types, list) and types and all(isinstance(t, str) for t in types)):
                raise PlanError(f"{where}.types: must be a non-empty list of registered type names")
            if not (isinstance(caps, dict) and caps and all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in caps.values())):
                raise PlanError(f"{where}.caps: must map cfg keys to positive integers, got {caps!r}")
            if not isinstance(rule.get("why"), str) or not rule["why"].strip():
                raise PlanError(f"{where}.why: say why these types get tighter caps")
        return scale

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def code_version(config: Optional[dict] = None) -> dict[str, str]:
    """What the run key includes besides the config: bench, the bench model code the config uses
    (its files only), and the libraries."""
    v = {"bench": __version__, "bench_models": model_code_fingerprint(config) if config is not None else "none"}
    return v | library_versions()


@functools.lru_cache(maxsize=None)
def _library_versions(libs: tuple[str, ...] = ("torch", "mmengine", "mmcv", "mmdet")) -> dict[str, str]:
    """The distributions' versions ("missing" when not installed), read once per process: importlib.metadata
    scans site-packages on each call. Callers get their own copy."""
    v = {}
    for lib in libs:
        try:
            v[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            v[lib] = "missing"
    return v


def library_versions(libs: tuple[str, ...] = ("torch", "mmengine", "mmcv", "mmdet")) -> dict[str, str]:
    return dict(_library_versions(libs))


# ------------------------------------------------------------------------------ config assembly
def _walk(node: Any, fn) -> None:
    if isinstance(node, dict):
        fn(node)
        for v in list(node.values()):
            _walk(v, fn)
    elif isinstance(node, list):
        for v in node:
            _walk(v, fn)


def _inner_dataset(ds: dict) -> dict:
    while ds.get("type") in _DATASET_WRAPPERS and isinstance(ds.get("dataset"), dict):
        ds = ds["dataset"]
    return ds


def _set_num_classes(model: dict, n: int) -> None:
    def fix(d: dict) -> None:
        if d.get("num_classes") == 80:  # the COCO heads of mmdet's configs
            d["num_classes"] = n
    _walk(model, fix)


def _strip_pretrained(model: dict) -> None:
    def fix(d: dict) -> None:
        ic = d.get("init_cfg")
        if isinstance(ic, dict) and ic.get("type") in PRETRAINED_INITS:
            d["init_cfg"] = None
        if isinstance(d.get("pretrained"), str):
            d["pretrained"] = None
    _walk(model, fix)


def _has_resize(node: Any) -> bool:
    found = []
    _walk(node, lambda d: found.append(d) if d.get("type") in _RESIZES else None)
    return bool(found)


def _resize_pipeline(pipeline: list, size_hw: list[int]) -> None:
    """Every resize becomes one fixed-size Resize, nested ones included: a RandomChoice between resize
    branches (DETR-style multi-scale + crop augmentation) becomes that single Resize too. A Resize
    that ignores the aspect ratio keeps doing so: models built for one fixed input size (YOLACT's
    550x550 after random crops) stack per-image priors and break on images of different sizes."""
    h, w = size_hw
    for i, t in enumerate(pipeline):
        if not isinstance(t, dict):
            continue
        if t.get("type") in _RESIZES or (t.get("type") == "RandomChoice" and _has_resize(t.get("transforms"))):
            keep = bool(t.get("keep_ratio", True)) if t.get("type") == "Resize" else True
            pipeline[i] = {"type": "Resize", "scale": (w, h), "keep_ratio": keep}
        elif isinstance(t.get("transforms"), list):  # RandomApply, Compose, RandomChoice-style wrappers
            inner = t["transforms"]
            for sub in ([inner] if not inner or isinstance(inner[0], dict) else inner):
                if isinstance(sub, list):
                    _resize_pipeline(sub, size_hw)


def _apply_train_spec(cfg: dict, row: Row) -> None:
    """Write the recipe's stated training setup into the config (the recipe is authoritative)."""
    tr = row.train
    ow = cfg.setdefault("optim_wrapper", {"type": "OptimWrapper"})
    opt = ow.setdefault("optimizer", {})
    if tr.optimizer and opt.get("type") != tr.optimizer:
        opt.clear()
        opt["type"] = tr.optimizer
    if tr.lr is not None:
        opt["lr"] = tr.lr
    if tr.weight_decay is not None:
        opt["weight_decay"] = tr.weight_decay
    if tr.momentum is not None and opt.get("type") == "SGD":
        opt["momentum"] = tr.momentum
    if tr.epochs is not None:
        cfg["train_cfg"] = {"type": "EpochBasedTrainLoop", "max_epochs": tr.epochs, "val_interval": tr.epochs}
    elif tr.iters is not None:
        cfg["train_cfg"] = {"type": "IterBasedTrainLoop", "max_iters": tr.iters, "val_interval": tr.iters}
    if tr.lr_steps is not None:
        by_epoch = tr.epochs is not None
        for s in cfg.get("param_scheduler") or []:
            if s.get("type") == "MultiStepLR":
                s["milestones"] = list(tr.lr_steps)
                s["by_epoch"] = by_epoch
                s["end"] = tr.epochs if by_epoch else tr.iters
    cfg["auto_scale_lr"] = {"enable": False, "base_batch_size": tr.batch_size or 16}


def metric_list(metric: Any) -> list[str]:
    """An evaluator's ``metric`` field (a name or a list of names) as a list."""
    return [metric] if isinstance(metric, str) else list(metric or [])


def eval_metrics(configured: Any, reported: list[str]) -> list[str]:
    """What the COCO evaluator computes: the config's own metrics (its model predicts those), plus
    ``segm`` where the paper reports a mask number for the row (``reported``: its published keys with
    a value). Never ``segm`` for a box-only model (mmdet's CocoMetric raises "segm is not in results"
    once such a model detects anything; sa-fpn Table 1's Faster R-CNN sits in a table of mask columns
    with its mask cells printed '-'), never ``bbox`` added to a mask model that predicts no boxes
    (SOLO's boxes are zeros: its box AP would be a meaningless 0)."""
    want = [m for m in ("bbox", "segm") if m in metric_list(configured)]
    if "segm" not in want and any(k.startswith("mask_") for k in reported):
        want.append("segm")
    return want or ["bbox", "segm"]


def _apply_dataset(cfg: dict, dataset: str, root: Path, eval_split: str, batch: int, workers: int,
                   flatten_wrappers: bool, reported: list[str]) -> list[str]:
    layout = LAYOUTS[dataset]
    root_s = str(root).rstrip("/") + "/"
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dl = cfg.get(key)
        if not isinstance(dl, dict) or "dataset" not in dl:
            continue
        train = key == "train_dataloader"
        ds = dl["dataset"]
        inner = _inner_dataset(ds)
        if flatten_wrappers:
            dl["dataset"] = ds = inner
        inner["type"] = layout.dataset_type
        inner["data_root"] = root_s
        inner["ann_file"] = layout.train_ann if train else layout.val_ann[eval_split]
        inner["data_prefix"] = {"img": layout.train_img if train else layout.val_img[eval_split]}
        if layout.classes is not None:
            inner["metainfo"] = {"classes": list(layout.classes)}
        dl["batch_size"] = batch if train else 1
        dl["num_workers"] = workers
        dl["persistent_workers"] = bool(workers)
    for key in ("val_evaluator", "test_evaluator"):
        ev = cfg.get(key)
        evs = ev if isinstance(ev, list) else [ev]
        for e in evs:
            if isinstance(e, dict):
                e["ann_file"] = root_s + layout.val_ann[eval_split]
                e["metric"] = eval_metrics(e.get("metric"), reported)
                e.pop("format_only", None)
                e.pop("outfile_prefix", None)
    classes = list(layout.classes) if layout.classes else None
    if classes is not None:
        _set_num_classes(cfg["model"], len(classes))
    return classes or []


def _apply_caps(model: dict, caps: dict) -> list[str]:
    """Lower sampling and proposal counts inside the model's train_cfg/test_cfg (never architecture):
    e.g. RoI sampler num 512 -> 128. A key caps that setting anywhere in them; a dotted key ``part.key``
    only under that part of train_cfg/test_cfg (``rcnn.num``: the R-CNN stages' samplers, not the RPN's).
    Returns what changed, 'path: old -> new'."""
    changed: list[str] = []

    def lower(node: dict, k: str, path: str, bounds: dict) -> bool:
        v = node[k]
        if k in bounds and isinstance(v, int) and not isinstance(v, bool) and v > bounds[k]:
            node[k] = bounds[k]
            changed.append(f"{path}: {v} -> {bounds[k]}")
            return True
        return False

    def visit(node: Any, path: str, bounds: dict) -> None:
        if isinstance(node, dict):
            for k in node:
                if not lower(node, k, f"{path}.{k}", bounds):
                    visit(node[k], f"{path}.{k}", bounds)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                visit(v, f"{path}[{i}]", bounds)

    plain = {k: v for k, v in caps.items() if "." not in k}
    for part in ("train_cfg", "test_cfg"):
        cfg = model.get(part)
        if not isinstance(cfg, dict):
            visit(cfg, f"model.{part}", plain)
            continue
        for name in cfg:
            scoped = {k.split(".", 1)[1]: v for k, v in caps.items() if k.startswith(f"{name}.")}
            bounds = {**plain, **{k: min(v, plain.get(k, v)) for k, v in scoped.items()}}
            if not lower(cfg, name, f"model.{part}.{name}", bounds):
                visit(cfg[name], f"model.{part}.{name}", bounds)
    return changed


def effective_caps(model: dict, scale: "Scale") -> tuple[dict, list[str]]:
    """The caps a model gets at a scale: the scale's ``caps``, lowered by every ``type_caps`` rule whose
    types the model's config names (architecture parts, not train_cfg/test_cfg). Returns (caps, the
    types that triggered a rule)."""
    caps = dict(scale.caps or {})
    arch = {k: v for k, v in model.items() if k not in ("train_cfg", "test_cfg")}
    present = set(iter_types(arch))
    hit: list[str] = []
    for rule in scale.type_caps or []:
        matched = sorted(present & set(rule["types"]))
        if matched:
            hit += [t for t in matched if t not in hit]
            for k, v in rule["caps"].items():
                caps[k] = min(v, caps.get(k, v))
    return caps, hit


def _smoke_overlay(cfg: dict, row: Row, scale: Scale) -> dict:
    """Apply the smoke scale's uniform overlay; return what it changed (recorded in the result)."""
    n = scale.iterations
    record: dict[str, Any] = {}
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dl = cfg.get(key) or {}
        ds = dl.get("dataset") or {}
        if isinstance(ds.get("pipeline"), list) and scale.input_size:
            _resize_pipeline(ds["pipeline"], scale.input_size)
        if key == "train_dataloader":
            dl["sampler"] = {"type": "InfiniteSampler", "shuffle": True}
            dl.pop("batch_sampler", None)
    caps, heavy = effective_caps(cfg["model"], scale)
    capped = _apply_caps(cfg["model"], caps)
    if capped:
        record["caps"] = capped
    if heavy:
        record["type_caps"] = {"types": heavy, "caps": {k: v for k, v in caps.items() if v != (scale.caps or {}).get(k)}}
    cfg["train_cfg"] = {"type": "IterBasedTrainLoop", "max_iters": n, "val_interval": n}
    cfg["val_cfg"] = {"type": "ValLoop"}
    cfg["test_cfg"] = {"type": "TestLoop"}
    tr = row.train
    milestones: list[int] = []
    if tr.lr_steps and (tr.epochs or tr.iters):
        total = tr.epochs or tr.iters
        milestones = [max(1, round(n * s / total)) for s in tr.lr_steps]
    cfg["param_scheduler"] = [
        {"type": "LinearLR", "start_factor": 0.1, "by_epoch": False, "begin": 0, "end": scale.warmup_iters},
    ] + ([{"type": "MultiStepLR", "by_epoch": False, "begin": 0, "end": n, "milestones": milestones, "gamma": 0.1}]
         if milestones else [])
    hooks = cfg.setdefault("default_hooks", {})
    hooks["checkpoint"] = {"type": "CheckpointHook", "interval": scale.checkpoint_interval, "by_epoch": False,
                           "max_keep_ckpts": 2, "save_last": True}  # two: a kill mid-save leaves the older one
    hooks["logger"] = {"type": "LoggerHook", "interval": 10}
    cfg["log_processor"] = {"type": "LogProcessor", "window_size": 10, "by_epoch": False}
    # gradient clipping keeps from-scratch SGD rows from blowing up in the first iterations
    cfg.setdefault("optim_wrapper", {}).setdefault("clip_grad", {"max_norm": 35, "norm_type": 2})
    record.update(iterations=n, lr_milestones=milestones, warmup_iters=scale.warmup_iters,
                  input_size=scale.input_size, batch_size=scale.batch_size, pretrained=scale.pretrained)
    return record


@dataclass
class RunSpec:
    """Everything a job needs; picklable, so submitit can ship it to a local or SLURM process."""

    run_key: str
    config: dict
    scale: str
    scale_cfg: dict
    dataset: str
    dataset_root: str
    eval_split: str
    targets: list[dict]           # [{"table", "row", "label", "published", "path"}]
    work_dir: str
    batch_size: int               # the total batch: per-process batch x processes
    gpus: int
    lr: Optional[float]
    lr_scaled_from: Optional[float]
    overlay: dict
    versions: dict
    config_hash: str
    input_size: Optional[list[int]] = None
    data_spec: Optional[dict] = None   # the synthetic set's spec (smoke), so any job process can make it
    train_key: str = ""                # runs with the same train_key differ only at test time: one trains
    reuse_training_after: Optional[float] = None  # evaluate a finished training (trained_pointer) newer than
                                                  # this time (epoch s; 0: any) instead of training; None: train
    weights: list = field(default_factory=list)   # paper scale: the checkpoints the config loads (bench.weights)
    declared_new: list = field(default_factory=list)  # the rows' model.declared_new ({keys, why}): preflight's judge
    tasks: int = 1                     # processes of the run: one per GPU, or CPU processes (gloo, --tasks)
    evaluator: str = "pycocotools"     # COCO evaluator of the job (bench.evaluators); not in the run key: only one
                                       # verified identical to pycocotools on the cross-check may serve a job


# Parts of an mmdet config that only inference reads. Two rows that differ only there (sbr-cnn Table 4's
# evaluation loops, amf-sparseinst Table 10's test sizes) share one training. model.test_cfg.rpn stays
# in: a two-stage detector falls back on it for training proposals when train_cfg has no rpn_proposal.
_TEST_ONLY_KEYS = ("test_dataloader", "test_evaluator", "test_cfg", "val_dataloader", "val_evaluator", "val_cfg",
                   "test_pipeline", "tta_model", "tta_pipeline")


def training_view(cfg: dict) -> dict:
    """The config minus what only inference reads: what a training's identity depends on."""
    view = {k: v for k, v in cfg.items() if k not in _TEST_ONLY_KEYS}
    model = dict(view.get("model") or {})
    test_cfg = model.pop("test_cfg", None)
    if isinstance(test_cfg, dict) and "rpn" in test_cfg:
        model["test_cfg"] = {"rpn": test_cfg["rpn"]}
    view["model"] = model
    return view


def trained_pointer(work_dir: str | Path, train_key: str) -> Path:
    """``results/<scale>/trained/<train_key>.json``: the finished training a test-only variant evaluates."""
    return Path(work_dir).parent.parent / "trained" / f"{train_key}.json"


def data_root_for(data_root, dataset: str) -> Optional[Path]:
    """The root for ``dataset`` from ``--data-root``: a bare folder (any dataset) or a mapping
    ``{dataset: folder}`` (``coco=DIR cityscapes=DIR``; key ``*`` for a bare folder among pairs)."""
    if data_root is None:
        return None
    if isinstance(data_root, dict):
        root = data_root.get(dataset, data_root.get("*"))
        return Path(root) if root is not None else None
    return Path(data_root)


def parse_data_roots(values) -> "dict[str, Path] | None":
    """``--data-root`` values (repeatable): ``DIR`` or ``DATASET=DIR`` with DATASET coco, cityscapes
    or synth. Refuses a dataset named twice or an unknown one."""
    if not values:
        return None
    if isinstance(values, (str, Path)):
        values = [values]
    out: dict[str, Path] = {}
    for v in values:
        v = str(v)
        name, sep, path = v.partition("=")
        if sep and name in LAYOUTS:
            key = name
        elif sep and "/" not in name and name:
            raise PlanError(f"--data-root {v!r}: unknown dataset {name!r} (known: {', '.join(sorted(LAYOUTS))}); "
                            "use DATASET=DIR or a bare DIR")
        else:
            key, path = "*", v
        if key in out:
            raise PlanError(f"--data-root: {'a bare folder' if key == '*' else key} given twice")
        out[key] = Path(path).expanduser()
    return out


def build_run_config(table: Table, row: Row, scale: Scale, data_root,
                     gpus: int | None = None, weights_dirs: Optional[list[Path]] = None,
                     tasks: int | None = None) -> tuple[dict, dict, dict]:
    """The full mmdet config of a row at a scale. Returns (config, overlay record, facts).

    ``gpus``: GPU processes (paper scale; default the recipe's). ``tasks``: CPU processes (gloo) instead,
    at either scale; the total batch (the paper's, or the smoke scale's) is split over the processes."""
    if gpus and tasks and tasks > 1:
        raise PlanError("--gpus and --tasks are exclusive: --gpus N trains on N GPUs (NCCL), --tasks N on N CPU "
                        "processes (gloo)")
    assert row.model is not None and row.model.config is not None
    cfg = copy.deepcopy(resolved_dict(row.model))
    _apply_train_spec(cfg, row)
    facts: dict[str, Any] = {}
    if scale.name == "smoke":
        dataset, root, split = "synth", data_root_for(data_root, "synth"), "val"
        batch, n_gpus = scale.batch_size, 0
    else:
        dataset, split = row.train.dataset, row.train.eval_split or ("val2017" if row.train.dataset == "coco" else "cityscapes-val")
        root = data_root_for(data_root, dataset)
        if root is None:
            raise PlanError(f"{table.name} row {row.id!r}: paper scale needs a {dataset} root "
                            f"(--data-root {dataset}=DIR)")
        check_root(dataset, root, split)
        n_gpus = gpus or row.train.gpus or 1
        batch = row.train.batch_size or 16
    n_tasks = max(1, n_gpus)
    if tasks and tasks > 1:  # CPU processes: no GPU
        n_gpus, n_tasks = 0, tasks
        if batch < tasks:
            raise PlanError(f"{table.name} row {row.id!r}: --tasks {tasks} is more processes than the total batch "
                            f"of {batch} images (each process needs at least one image per iteration)")
    per_gpu = max(1, batch // n_tasks)
    if not scale.pretrained:
        _strip_pretrained(cfg["model"])
    elif scale.name == "paper":
        from bench.weights import localize

        # checkpoints found on this machine replace their URLs: compute nodes are usually offline
        facts["weights"] = [w.as_dict() for w in localize(cfg, weights_dirs)]
    reported = [k for k, v in row.published.items() if v is not None]
    _apply_dataset(cfg, dataset, root, split, per_gpu, scale.workers, flatten_wrappers=scale.name == "smoke",
                   reported=reported)
    overlay = {"scale": scale.name}
    if scale.name == "smoke":
        overlay.update(_smoke_overlay(cfg, row, scale))
    opt = cfg.get("optim_wrapper", {}).get("optimizer", {})
    lr, scaled_from = opt.get("lr"), None
    lr_rule = row.train.lr_scaling if scale.lr_scaling == "recipe" else scale.lr_scaling
    paper_batch = row.train.batch_size
    if lr is not None and lr_rule == "linear" and paper_batch and per_gpu * n_tasks != paper_batch:
        scaled_from = lr
        lr = lr * per_gpu * n_tasks / paper_batch
        opt["lr"] = lr
    overlay["lr_rule"] = lr_rule
    cfg["randomness"] = {"seed": scale.seed, "deterministic": False}
    cfg.setdefault("custom_hooks", [])
    cfg["custom_hooks"] = [h for h in cfg["custom_hooks"] if h.get("type") not in ("BenchProgressHook", "CheckInvalidLossHook")]
    cfg["custom_hooks"] += [{"type": "CheckInvalidLossHook", "interval": 1},
                            {"type": "BenchProgressHook", "interval": 5}]
    cfg["launcher"] = "none"
    cfg.pop("work_dir", None)
    cfg.pop("load_from", None)
    cfg.pop("resume", None)
    if n_tasks > 1:  # what each process gets of the total batch (measurement.distributed says what ran)
        overlay.update(tasks=n_tasks, batch_asked=batch, per_task_batch=per_gpu)
    facts.update(dataset=dataset, root=str(root), eval_split=split, batch=per_gpu * n_tasks,
                 gpus=n_gpus, tasks=n_tasks, lr=lr, lr_scaled_from=scaled_from)
    return cfg, overlay, facts


# ----------------------------------------------------------------------------------------- plan
@dataclass
class PlannedRow:
    table: str
    row: Row
    status: RowStatus
    reason: str
    action: str                   # "run" | "done" | "shared" | "cannot run"
    run_key: Optional[str] = None
    result: Optional[str] = None
    shared_with: list[str] = field(default_factory=list)
    est_minutes: Optional[float] = None
    est_source: Optional[str] = None       # where est_minutes comes from (bench.cost)
    est_gpu_hours: Optional[float] = None


@dataclass
class Plan:
    scale: Scale
    rows: list[PlannedRow]
    runs: dict[str, RunSpec]
    reuse: list[tuple[dict, Path]] = field(default_factory=list)   # (target, finished run's result.json)


def synth_spec(scale: Scale):
    from bench.data import synth

    d = dict(scale.synth or {})
    size = d.pop("size", 256)
    return synth.SynthSpec(width=size, height=size, **d)


_FINGERPRINTS: dict[tuple, str] = {}


def synth_fingerprint(scale: Scale, root: Path) -> str:
    """The content hash of the smoke scale's synthetic set at ``root`` (made first if the folder does
    not hold it yet: the set is deterministic, and its content is what a run key must name)."""
    from bench.data import synth
    from bench.data.datasets import content_fingerprint

    manifest = root / "manifest.json"
    if not manifest.exists():
        synth.generate(root, synth_spec(scale))
    stamp = (str(root.resolve()), manifest.stat().st_mtime_ns)
    if stamp not in _FINGERPRINTS:
        _FINGERPRINTS[stamp] = content_fingerprint(root)
    return _FINGERPRINTS[stamp]


def _synth_root(scale: Scale) -> Path:
    from bench.data import synth

    return synth.default_dir(synth_spec(scale))


def paper_estimate(cfg: dict, facts: dict, results_root: Path, run_key: str):
    """GPU-hours of a paper-scale run (bench.cost.paper_cost): the config's own schedule (epochs or
    iterations, RepeatDataset included), rated by a GPU preflight of this run if one exists."""
    from bench.cost import paper_cost

    tc = cfg.get("train_cfg") or {}
    ds = ((cfg.get("train_dataloader") or {}).get("dataset") or {})
    repeat = ds.get("times", 1) if ds.get("type") == "RepeatDataset" else 1
    pre = None
    try:
        import json

        pre = json.loads((Path(results_root) / "paper" / "preflight" / f"{run_key}.json").read_text())
    except (OSError, ValueError):
        pass
    return paper_cost(tc.get("max_epochs"), tc.get("max_iters"), facts["dataset"], facts["batch"], facts["gpus"],
                      repeat=repeat, preflight=pre)


def seed_results_root(results_root: Path, seed_index: int) -> Path:
    """Seed 0 writes to the results root; the extra seeds of `bench run --seeds N` to results/seeds/<k>/."""
    return Path(results_root) if seed_index == 0 else Path(results_root) / "seeds" / str(seed_index)


#: `bench run --log NAME`: mmengine's visualizer backend, the Python package it needs, and its offline settings
LOG_BACKENDS = {
    "tensorboard": ("TensorboardVisBackend", "tensorboard", {}),
    "wandb": ("WandbVisBackend", "wandb", {"init_kwargs": {"mode": "offline"}}),   # WandbVisBackend adds dir=save_dir
    "mlflow": ("MLflowVisBackend", "mlflow", {}),   # no tracking_uri: a file store under the run's vis_data folder
}


def log_backend(name: str) -> dict:
    """The visualizer backend of ``bench run --log NAME`` (offline: it writes files under the run's work dir), or
    PlanError saying why it cannot be used here."""
    import importlib.util

    if name not in LOG_BACKENDS:
        raise PlanError(f"--log {name!r}: unknown (known: {', '.join(LOG_BACKENDS)})")
    vis_type, package, extra = LOG_BACKENDS[name]
    if importlib.util.find_spec(package) is None:
        raise PlanError(f"--log {name}: refused: the {package!r} package is not installed in this environment "
                        f"(mmengine's {vis_type} needs it; `pip install {package}` into the venv, then it logs offline)")
    return {"type": vis_type, **copy.deepcopy(extra)}


def add_log_backend(cfg: dict, backend: dict) -> None:
    """Add a visualizer backend to a run's config, beside mmdet's LocalVisBackend (scalars.json)."""
    vis = cfg.setdefault("visualizer", {"type": "DetLocalVisualizer", "name": "visualizer"})
    backends = vis.setdefault("vis_backends", [{"type": "LocalVisBackend"}])
    if not any(b.get("type") == backend["type"] for b in backends if isinstance(b, dict)):
        backends.append(backend)


def make_plan(tables: list[tuple[Table, list[Row]]], scale_name: str, results_root: Path,
              data_root=None, force: bool = False, gpus: int | None = None,
              seed_index: int = 0, weights_dirs: Optional[list[Path]] = None, log: Optional[str] = None,
              evaluator: str = "pycocotools", tasks: int | None = None) -> Plan:
    import dataclasses

    scale = Scale.load(scale_name)
    if tasks is not None and tasks < 1:
        raise PlanError(f"--tasks {tasks}: give 1 or more processes")
    if gpus and tasks and tasks > 1:
        raise PlanError("--gpus and --tasks are exclusive: --gpus N trains on N GPUs (NCCL), --tasks N on N CPU "
                        "processes (gloo)")
    backend = log_backend(log) if log else None
    if seed_index:
        scale = dataclasses.replace(scale, seed=scale.seed + seed_index)
        results_root = seed_results_root(results_root, seed_index)
    if scale.name == "smoke" and data_root_for(data_root, "synth") is None:
        data_root = _synth_root(scale)
    versions = code_version()
    planned_at = time.time()
    costs = CostModel(results_root, scale.name)
    val_images = (scale.synth or {}).get("val_images", 0)
    planned: list[PlannedRow] = []
    runs: dict[str, RunSpec] = {}
    reuse: list[tuple[dict, Path]] = []
    for table, rows in tables:
        for row in rows:
            status, reason = row_status(row)
            pr = PlannedRow(table.name, row, status, reason, "cannot run")
            planned.append(pr)
            if status is not RowStatus.RUNNABLE:
                continue
            if row.model.module is not None:
                pr.reason = "layer-only row: profiled by `bench profile`, nothing to train"
                continue
            try:
                cfg, overlay, facts = build_run_config(table, row, scale, data_root, gpus, weights_dirs, tasks)
            except Exception as e:  # noqa: BLE001 - a row that cannot be assembled is reported, not fatal
                pr.reason = f"cannot assemble its config: {e}"
                continue
            data_key = (f"synth:{synth_fingerprint(scale, Path(facts['root']))}" if facts["dataset"] == "synth"
                        else f"{facts['dataset']}:{facts['root']}:{facts['eval_split']}")
            config_hash = canonical_hash(cfg)
            scale_key = {k: v for k, v in scale.as_dict().items() if k not in ("description", "type_caps")}
            code = versions | {"bench_models": model_code_fingerprint(cfg)}
            ident = {"config": config_hash, "scale": scale_key, "data": data_key, "code": code}
            if facts["tasks"] > 1 and not facts["gpus"]:  # CPU processes: another run than the same split on GPUs
                ident["cpu_tasks"] = facts["tasks"]
            key = canonical_hash(ident)
            train_key = canonical_hash({"config": canonical_hash(training_view(cfg)), "scale": scale_key,
                                        "data": data_key, "code": code}
                                       | ({"cpu_tasks": ident["cpu_tasks"]} if "cpu_tasks" in ident else {}))
            pr.run_key = key
            path = result_path(results_root, scale.name, table.name, row.id)
            pr.result = str(path)
            rate = costs.rate(cfg.get("model"), scale.input_size) if scale.name == "smoke" else None
            if rate is not None:
                pr.est_minutes = rate.minutes(scale.iterations or 0, val_images, scale.input_size)
                pr.est_source = rate.source
            if scale.name == "paper":
                est = paper_estimate(cfg, facts, results_root, key)
                pr.est_gpu_hours, pr.est_source = est.gpu_hours, est.source
            target = {"table": table.name, "row": row.id, "label": row.label,
                      "published": dict(row.published), "path": str(path)}
            if not force and path.exists():
                try:
                    res = read_result(path)
                    if res.run_key == key and res.status == "done":
                        pr.action = "done"
                        continue
                except ResultReadError:
                    pass
            if key in runs:
                pr.action = "shared"
                runs[key].targets.append(target)
                runs[key].declared_new += [d.model_dump() for d in row.model.declared_new
                                           if d.model_dump() not in runs[key].declared_new]
                continue
            done_run = run_dir(results_root, scale.name, key) / "result.json"
            if not force and _run_done(done_run):
                pr.action = "reuse"
                pr.reason = f"same model already trained for another row: {done_run.parent.name}"
                reuse.append((target, done_run))
                continue
            pr.action = "run"
            if backend is not None:  # after the run key: where a run logs does not change what it trains
                add_log_backend(cfg, backend)
            runs[key] = RunSpec(
                run_key=key, config=cfg, scale=scale.name, scale_cfg=scale.as_dict(), dataset=facts["dataset"],
                dataset_root=facts["root"], eval_split=facts["eval_split"], targets=[target],
                work_dir=str(run_dir(results_root, scale.name, key)), batch_size=facts["batch"],
                gpus=facts["gpus"], lr=facts["lr"], lr_scaled_from=facts["lr_scaled_from"], overlay=overlay,
                versions=code, config_hash=config_hash, input_size=scale.input_size,
                data_spec=(synth_spec(scale).__dict__ if facts["dataset"] == "synth" else None),
                train_key=train_key, weights=facts.get("weights", []), evaluator=evaluator,
                declared_new=[d.model_dump() for d in row.model.declared_new], tasks=facts["tasks"])
            trained = trained_pointer(runs[key].work_dir, train_key)
            first = next((r for r in runs.values() if r.train_key == train_key and r.run_key != key), None)
            if first is not None:  # the first run of the group trains (again, with --force); this one waits for it
                runs[key].reuse_training_after = planned_at if force else 0.0
            elif not force:
                runs[key].reuse_training_after = 0.0
            if not force and trained.exists():
                pr.reason = "evaluates a finished training of the same model (differs only at test time)"
            elif first is not None:
                pr.reason = ("trains nothing: evaluates the training of " + ", ".join(
                    f"{t['table']}/{t['row']}" for t in first.targets) + " (differs only at test time)")
            if first is not None or (not force and trained.exists()):
                if rate is not None:  # evaluation only
                    pr.est_minutes = rate.minutes(0, val_images, scale.input_size)
                pr.est_gpu_hours = 0.0 if pr.est_gpu_hours is not None else None
    for pr in planned:
        if pr.run_key in runs:
            pr.shared_with = [f"{t['table']}/{t['row']}" for t in runs[pr.run_key].targets
                              if (t["table"], t["row"]) != (pr.table, pr.row.id)]
    return Plan(scale, planned, runs, reuse)


def _run_done(path: Path) -> bool:
    import json

    try:
        return json.loads(path.read_text()).get("status") == "done"
    except (OSError, ValueError):
        return False


def apply_reuse(plan: Plan) -> list[str]:
    """Write the result files of rows served by a run that already finished for other rows."""
    import json

    from bench.results import Result, write_result

    written = []
    for target, run_result in plan.reuse:
        base = json.loads(run_result.read_text())
        base.pop("shared_with", None)
        res = Result(table=target["table"], row=target["row"], label=target["label"], published=target["published"],
                     shared_with=[], **{k: v for k, v in base.items() if k in Result.model_fields
                                        and k not in ("table", "row", "label", "published")})
        if isinstance(base.get("matches"), dict) and (run_result.parent / "matches.npz").is_file():
            from bench.matches import copy_beside

            res.matches = copy_beside(run_result.parent / "matches.npz", Path(target["path"]), base["matches"])
        write_result(Path(target["path"]), res)
        written.append(f"{target['table']}/{target['row']}")
    return written
