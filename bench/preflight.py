"""Preflight: prove that a paper-scale run starts, in minutes, on this machine, before a cluster hour
is spent on it.

For one run of a paper-scale plan it takes the exact config the cluster job gets (the recipe's
dataset under the data root, its per-GPU batch, lr rule, pipeline and input size, its pretrained
weights) and, in this process (no distributed launcher):

1. data: builds the train and evaluation datasets as mmdet builds them and counts what they
   yield: images, ground-truth instances, instances the pipeline's own ``LoadAnnotations`` ignores,
   instances with a non-empty mask (for a row that reports a mask number). No trainable instance,
   or an evaluation split without annotations, fails the run;
2. weights: every checkpoint the config loads must be a local file (``bench.weights``), is loaded
   into the model the way mmengine's initialisation loads it, and judged against the module it is
   loaded into (``bench.loadcheck``): every parameter and running statistic of that module must be
   filled with its own shape unless declared new (a DCN offset branch, a model's ``pretrained_parts``,
   the recipe's ``model.declared_new``), and no key of the file may go unused but a classifier head;
3. training: N iterations (data loading, forward, backward, optimizer step) at the paper's input
   size and per-GPU batch, on the CPU or the local GPU; every loss must be finite and gradients
   must reach the trainable parameters;
4. evaluation: the test pipeline, the model's inference and the row's evaluator on 2 images of the
   evaluation split.

It records status (ok / failed) and reason, the counts, s/iteration and peak memory (the process's
resident set size on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU). Records are cached under
``results/paper/preflight/<run key>.json`` so ``bench run --scale paper`` checks each run once.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from bench.plan import Plan, RunSpec
from bench.results import atomic_write_json

EVAL_IMAGES = 2
COUNT_IMAGES = 2000   # images whose annotations are run through LoadAnnotations when counting


@dataclass
class Preflight:
    table: str
    row: str
    run_key: str
    status: str = "failed"               # ok | failed
    reason: str = ""
    rows: list[str] = field(default_factory=list)   # every table/row this run serves
    dataset: str = ""
    train_images: Optional[int] = None
    train_instances: Optional[int] = None    # trainable (not ignored) instances, through the pipeline's loader
    train_ignored: Optional[int] = None
    train_with_masks: Optional[int] = None
    counted_images: Optional[int] = None     # how many train images the instance counts cover
    eval_images: Optional[int] = None
    eval_instances: Optional[int] = None
    iters: int = 0
    s_per_iter: Optional[float] = None
    first_iter_s: Optional[float] = None
    losses: dict[str, float] = field(default_factory=dict)
    grad_params: Optional[str] = None        # "n of m trainable tensors got a gradient"
    no_grad: list[str] = field(default_factory=list)   # trainable modules no gradient reached
    peak_mem_mb: Optional[float] = None
    mem_kind: str = ""
    eval_metrics: dict[str, float] = field(default_factory=dict)
    eval_detections: Optional[int] = None
    eval_processed: Optional[int] = None   # images this process ran the test step on (a rank's shard)
    evaluator: str = ""                      # the COCO evaluator the run's jobs will use, as it ran here
    weights: list[dict] = field(default_factory=list)
    device: str = ""
    batch_per_gpu: Optional[int] = None
    input_size: Optional[str] = None
    wall_s: Optional[float] = None
    phases_s: dict[str, float] = field(default_factory=dict)
    finished_at: Optional[float] = None

    def as_dict(self) -> dict:
        return asdict(self)


class PreflightFailure(Exception):
    """A check that failed; the message is the row's reason."""


def preflight_path(results_root: Path, run_key: str) -> Path:
    return Path(results_root) / "paper" / "preflight" / f"{run_key}.json"


def cached(results_root: Path, run_key: str) -> Optional[dict]:
    try:
        return json.loads(preflight_path(results_root, run_key).read_text())
    except (OSError, ValueError):
        return None


# -------------------------------------------------------------------------------------- memory
def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> Optional[float]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------- data
def _inner(ds_cfg: Any) -> Any:
    while isinstance(ds_cfg, dict) and isinstance(ds_cfg.get("dataset"), dict):
        ds_cfg = ds_cfg["dataset"]
    return ds_cfg


def _base_dataset(ds):
    while hasattr(ds, "dataset") and not hasattr(ds, "data_list"):
        ds = ds.dataset
    if hasattr(ds, "datasets") and not hasattr(ds, "data_list"):   # ConcatDataset
        return ds.datasets[0]
    return ds


def _annotation_loader(pipeline: list):
    from mmdet.registry import TRANSFORMS

    for t in pipeline or []:
        if isinstance(t, dict) and "LoadAnnotations" in str(t.get("type", "")):
            return TRANSFORMS.build(copy.deepcopy(t)), t
    return None, None


def count_instances(ds, pipeline: list, mask_row: bool, limit: int = COUNT_IMAGES) -> dict:
    """What the dataset yields to training: per image, the pipeline's own annotation loader run on
    its annotations (no image decoding), counting kept, ignored and masked instances."""
    base = _base_dataset(ds)
    loader, loader_cfg = _annotation_loader(pipeline)
    n = len(base)
    kept = ignored = masked = 0
    counted = min(n, limit)
    for i in range(counted):
        info = copy.deepcopy(base.get_data_info(i))
        if loader is None:
            insts = info.get("instances", [])
            kept += sum(not x.get("ignore_flag", 0) for x in insts)
            ignored += sum(bool(x.get("ignore_flag", 0)) for x in insts)
            continue
        info.setdefault("ori_shape", (info.get("height"), info.get("width")))
        info.setdefault("img_shape", info["ori_shape"])
        out = loader(info)
        flags = out.get("gt_ignore_flags")
        if flags is None:
            continue
        kept += int((~flags).sum())
        ignored += int(flags.sum())
        if mask_row and out.get("gt_masks") is not None:
            areas = out["gt_masks"].areas
            masked += int(sum(1 for a, f in zip(areas, flags) if not f and a > 0))
    # images of the dataset itself (after mmdet's filter_cfg), not a RepeatDataset's repeated length
    return {"images": n, "kept": kept, "ignored": ignored, "masked": masked, "counted": counted,
            "loader": loader_cfg}


# ------------------------------------------------------------------------------------- weights
class _LoadRecorder:
    """Records, during ``model.init_weights()``, which checkpoint file was read and judges what each state dict
    loaded into a module against what the module has (``bench.loadcheck.judge``). Files are seen through
    mmengine's ``CheckpointLoader.load_checkpoint`` (every scheme and mmengine's own initialisers read through
    it); loads through mmengine's ``load_state_dict`` (Pretrained inits, load_checkpoint) and through
    ``nn.Module.load_state_dict`` (a module's own loader, e.g. ISDA's partial COCO load). ``declared``:
    the recipe's (glob, why) declarations of parameters new to the pretrained network."""

    def __init__(self, model, declared: list[tuple[str, str]] = ()):
        self.calls: list[dict] = []
        self._file: Optional[str] = None
        self._model = model
        self._declared = list(declared)
        self._paths: Optional[dict[int, str]] = None

    def _record(self, module, state_dict) -> None:
        from bench.loadcheck import judge, model_declarations

        if self._paths is None:
            self._paths = {id(m): n for n, m in self._model.named_modules()}
        path = self._paths.get(id(module), type(module).__name__)
        params = {n for n, _ in module.named_parameters()}
        own = {k: (tuple(v.shape), v.numel(), k in params) for k, v in module.state_dict().items()}
        sd = {k.removeprefix("module."): tuple(getattr(v, "shape", ())) for k, v in state_dict.items()}
        verdict = judge(path, own, sd, model_declarations(module, path) + self._declared)
        self.calls.append({"file": self._file, "module": type(module).__name__, "own": len(own),
                           "file_keys": len(sd)} | verdict)

    def __enter__(self):
        import torch
        import mmengine.runner.checkpoint as ck

        self._ck, self._orig = ck, ck.load_state_dict
        self._orig_loader = ck.CheckpointLoader.__dict__["load_checkpoint"]
        self._orig_module_load = torch.nn.Module.load_state_dict
        rec = self

        def loader(cls, filename, *a, **kw):
            rec._file = str(filename)
            return rec._orig_loader.__func__(cls, filename, *a, **kw)

        def recording(module, state_dict, strict=False, logger=None):
            rec._record(module, state_dict)
            return rec._orig(module, state_dict, strict=strict, logger=logger)

        def module_load(module, state_dict, *a, **kw):
            rec._record(module, state_dict)
            return rec._orig_module_load(module, state_dict, *a, **kw)

        ck.load_state_dict = recording
        ck.CheckpointLoader.load_checkpoint = classmethod(loader)
        torch.nn.Module.load_state_dict = module_load
        return self

    def __exit__(self, *exc):
        import torch

        self._ck.load_state_dict = self._orig
        self._ck.CheckpointLoader.load_checkpoint = self._orig_loader
        torch.nn.Module.load_state_dict = self._orig_module_load
        return False


def _short(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


# --------------------------------------------------------------------------------------- checks
def _finite_losses(log_vars: dict, it: int) -> dict[str, float]:
    out = {}
    for k in sorted(log_vars, key=lambda k: k == "loss"):   # name the component before the total
        f = float(log_vars[k])
        if not math.isfinite(f):
            raise PreflightFailure(f"training iteration {it} (NaN/inf loss): {k} is {f}")
        out[k] = round(f, 4)
    return out


def _where(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    return f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""


def _grad_report(model) -> tuple[int, int, list[str]]:
    import torch

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    got = [(n, p) for n, p in trainable if p.grad is not None and bool(torch.isfinite(p.grad).all())
           and bool(p.grad.abs().sum() > 0)]
    bad = [n for n, p in trainable if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    if bad:
        raise PreflightFailure(f"non-finite gradients in {_short(bad)}")
    got_names = {n for n, _ in got}
    silent = sorted({n.rsplit(".", 1)[0] for n, _ in trainable if n not in got_names})
    return len(got), len(trainable), silent


def judge_loads(weights: list[dict], calls: list[dict]) -> None:
    """Attach to each checkpoint entry its loads and their verdict (``bench.loadcheck.summarise``: the
    ``loaded_fraction``, ``missing``, ``unexpected``, ``mismatched`` and ``declared_new`` fields), and fail the
    run on a checkpoint never loaded or one that left a parameter of its target unloaded."""
    from bench.loadcheck import failure, summarise

    by_file: dict[str, list] = {}
    for c in calls:
        by_file.setdefault(c.get("file") or "", []).append(c)
    for w in weights:
        w["loads"] = by_file.get(w.get("found") or "", [])
        w.update(summarise(w["loads"]))
    unused = [w["ref"] for w in weights if not w["loads"]]
    if unused:
        raise PreflightFailure("the config names weights that model.init_weights() never loaded: " + ", ".join(unused))
    bad = [failure(w["file_name"], w) for w in weights if not w["ok"]]
    if bad:
        raise PreflightFailure("; ".join(bad))


def run_one(spec: RunSpec, iters: int = 2, device: str = "cpu", eval_images: int = EVAL_IMAGES,
            count_limit: int = COUNT_IMAGES, stop_after: Optional[str] = None, keep: Optional[dict] = None) -> Preflight:
    """Preflight one run of a paper-scale plan (see the module docstring). ``stop_after`` ("data",
    "weights", "train") ends it early, ok so far; ``keep`` (a dict) receives the built model."""
    first = spec.targets[0]
    rec = Preflight(table=first["table"], row=first["row"], run_key=spec.run_key, dataset=spec.dataset,
                    rows=[f"{t['table']}/{t['row']}" for t in spec.targets], iters=iters)
    t_start = time.perf_counter()
    try:
        # pycocotools and mmengine print progress to stdout: keep stdout for the command's own output (--json)
        with contextlib.redirect_stdout(sys.stderr):
            _check(spec, rec, iters, device, eval_images, count_limit, stop_after, keep)
        rec.status, rec.reason = "ok", ""
    except PreflightFailure as e:
        rec.reason = str(e)
    except Exception as e:  # noqa: BLE001 - any failure is this run's reason
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        msg = str(e).strip().splitlines()[0][:400] if str(e).strip() else ""
        rec.reason = f"{type(e).__name__}: {msg}{where}"
        if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
            rec.reason = "out of memory: " + rec.reason
    rec.wall_s = round(time.perf_counter() - t_start, 1)
    rec.finished_at = time.time()
    return rec


class _Stop(Exception):
    pass


def _check(spec: RunSpec, rec: Preflight, iters: int, device: str, eval_images: int, count_limit: int,
           stop_after: Optional[str], keep: Optional[dict]) -> None:
    phases: dict[str, float] = {}
    try:
        _checks(spec, rec, iters, device, eval_images, count_limit, phases, stop_after, keep if keep is not None else {})
    except _Stop:
        pass
    finally:
        rec.phases_s = {k: round(v, 2) for k, v in phases.items()}


def _checks(spec: RunSpec, rec: Preflight, iters: int, device: str, eval_images: int, count_limit: int,
            phases: dict, stop_after: Optional[str], keep: dict) -> None:
    import torch
    from mmengine.config import Config
    from mmengine.evaluator import Evaluator
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner

    from bench.data.datasets import LAYOUTS, check_root
    from bench.resolve import register_all
    from bench.weights import localize

    t = time.perf_counter()
    register_all()
    if device == "cuda" and not torch.cuda.is_available():
        raise PreflightFailure("--device cuda: no CUDA device is visible to torch here")
    cfg = Config(copy.deepcopy(spec.config))
    mask_row = "segm" in json.dumps(cfg.get("test_evaluator", {}))
    rec.batch_per_gpu = cfg.train_dataloader.get("batch_size")

    # 1. data ------------------------------------------------------------------------------
    check_root(spec.dataset, Path(spec.dataset_root), spec.eval_split)
    from mmdet.registry import DATASETS

    train_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    train_ds = DATASETS.build(train_cfg)
    inner = _inner(cfg.train_dataloader.dataset)
    counts = count_instances(train_ds, inner.get("pipeline"), mask_row, count_limit)
    rec.train_images, rec.train_instances = counts["images"], counts["kept"]
    rec.train_ignored, rec.counted_images = counts["ignored"], counts["counted"]
    rec.train_with_masks = counts["masked"] if mask_row else None
    layout = LAYOUTS[spec.dataset]
    where = f"{layout.train_ann} under {spec.dataset_root}"
    if rec.train_images == 0:
        raise PreflightFailure(f"the train dataset yields 0 images ({where}; after mmdet's filter_cfg)")
    if rec.train_instances == 0:
        loader = counts["loader"] or {}
        why = ""
        if rec.train_ignored and loader.get("poly2mask") is False:
            why = (" (LoadAnnotations(poly2mask=False) ignores every mask that is not a polygon list, and "
                   "this annotation file stores RLE masks: set poly2mask: true)")
        raise PreflightFailure(f"0 trainable ground-truth instances in the first {rec.counted_images} train images "
                               f"({rec.train_ignored} ignored by the pipeline's LoadAnnotations){why}; {where}")
    if mask_row and not rec.train_with_masks:
        raise PreflightFailure(f"a mask row whose train instances carry no mask ({rec.train_instances} instances, "
                               f"none with a non-empty mask); {where}")
    test_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    eval_ds = DATASETS.build(test_cfg)
    eval_base = _base_dataset(eval_ds)
    rec.eval_images = len(eval_ds)
    rec.eval_instances = sum(len(eval_base.get_data_info(i).get("instances", []))
                             for i in range(len(eval_base)))
    if rec.eval_images == 0:
        raise PreflightFailure(f"the evaluation split {spec.eval_split} yields 0 images")
    if rec.eval_instances == 0:
        raise PreflightFailure(
            f"the evaluation split {spec.eval_split} ({layout.val_ann[spec.eval_split]}) has no annotations: "
            "nothing to compute AP against" + (" (COCO test-dev is scored only by the evaluation server)"
                                               if spec.eval_split == "test-dev" else ""))
    phases["data"] = time.perf_counter() - t
    if stop_after == "data":
        raise _Stop

    # 2. model and weights -------------------------------------------------------------------
    t = time.perf_counter()
    rec.weights = [dict(w) for w in (spec.weights or [])] or [w.as_dict() for w in localize(copy.deepcopy(spec.config))]
    missing = [w for w in rec.weights if not w.get("found")]
    if missing:
        raise PreflightFailure("weights not on this machine: " + "; ".join(
            f"{w['ref']} -> put {w['file_name']} at {w['put_at']}" + (f" (download: {w['url']})" if w.get("url") else "")
            for w in missing))
    from mmdet.registry import MODELS

    on_cpu_mem = device != "cuda"
    if on_cpu_mem:
        rec.mem_kind = "peak RSS of the preflight process (CPU)" if _reset_peak_rss() else \
            "peak RSS of the whole preflight process so far (CPU; this kernel cannot reset it per run)"
    else:
        torch.cuda.reset_peak_memory_stats()
        rec.mem_kind = "torch.cuda.max_memory_allocated"
    model = MODELS.build(cfg.model)
    model = revert_sync_batchnorm(model)
    declared = [(d["keys"], d["why"]) for d in getattr(spec, "declared_new", None) or []]
    with _LoadRecorder(model, declared) as loads:
        model.init_weights()
    judge_loads(rec.weights, loads.calls)
    model.to(device)
    rec.device = (f"cuda: {torch.cuda.get_device_name(0)}" if device == "cuda"
                  else f"cpu ({torch.get_num_threads()} threads)")
    phases["model"] = time.perf_counter() - t
    keep["model"] = model
    if stop_after == "weights":
        raise _Stop

    # 3. training iterations -------------------------------------------------------------------
    t = time.perf_counter()
    dl_cfg = copy.deepcopy(cfg.train_dataloader)
    dl_cfg["dataset"] = train_ds
    dl_cfg["num_workers"] = 0
    dl_cfg["persistent_workers"] = False
    loader = Runner.build_dataloader(dl_cfg, seed=0)
    optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    from bench.distributed import ddp_wrap

    fwd = ddp_wrap(model, cfg)   # `--tasks N`: DistributedDataParallel over the ranks (gradients all-reduced)
    model.train()
    times: list[float] = []
    data_iter = iter(loader)
    for it in range(1, iters + 1):
        t0 = time.perf_counter()
        try:
            data = next(data_iter)
        except StopIteration:
            data_iter = iter(loader)
            data = next(data_iter)
        try:
            with optim.optim_context(fwd):
                batch = model.data_preprocessor(data, True)
                losses = fwd._run_forward(batch, mode="loss")
        except Exception as e:  # noqa: BLE001 - name the iteration; a model's own NaN assertion is a NaN
            text = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            kind = " (NaN/inf loss)" if "nan" in text.lower() or "infinite" in text.lower() else ""
            raise PreflightFailure(f"training iteration {it}{kind}: {text}{_where(e)}") from e
        parsed, log_vars = model.parse_losses(losses)
        rec.losses = _finite_losses(log_vars, it)
        optim.backward(parsed)
        if it == 1:
            got, total, silent = _grad_report(model)
            rec.grad_params = f"{got} of {total} trainable tensors got a gradient"
            rec.no_grad = silent[:30]
            if total == 0:
                raise PreflightFailure("the model has no trainable parameters")
            if got == 0:
                raise PreflightFailure("no gradient reached any trainable parameter")
        optim.step()
        optim.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    rec.first_iter_s = round(times[0], 3)
    steady = times[1:] or times
    rec.s_per_iter = round(sum(steady) / len(steady), 3)
    phases["train"] = time.perf_counter() - t
    if stop_after == "train":
        raise _Stop

    # 4. evaluation on a few images ------------------------------------------------------------
    t = time.perf_counter()
    tdl = copy.deepcopy(cfg.test_dataloader)
    tdl["dataset"] = dict(tdl["dataset"], indices=min(eval_images, rec.eval_images))
    tdl.update(batch_size=1, num_workers=0, persistent_workers=False)
    tdl["sampler"] = {"type": "DefaultSampler", "shuffle": False}
    test_loader = Runner.build_dataloader(tdl, seed=0)
    evaluator = Evaluator(copy.deepcopy(cfg.test_evaluator))
    evaluator.dataset_meta = test_loader.dataset.metainfo
    model.eval()
    n_det = n_img = 0
    with torch.no_grad():
        for data in test_loader:
            outputs = model.test_step(data)
            n_img += len(outputs)
            n_det += sum(len(o.pred_instances) for o in outputs if "pred_instances" in o)
            evaluator.process(data_samples=outputs, data_batch=data)
    from bench.evaluators import use as use_evaluator
    from bench.job import evaluator_outcome, job_evaluator

    name, label = job_evaluator(getattr(spec, "evaluator", "pycocotools"))   # the jobs' evaluator, checked here too
    with use_evaluator(name) as ran:
        metrics = evaluator.evaluate(len(test_loader.dataset))
    rec.evaluator = evaluator_outcome(name, label, ran)
    rec.eval_metrics = {k: round(float(v), 4) for k, v in metrics.items() if isinstance(v, (int, float))}
    rec.eval_detections = n_det
    rec.eval_processed = n_img
    phases["eval"] = time.perf_counter() - t
    if on_cpu_mem:
        rec.peak_mem_mb = round(_peak_rss_mb() or 0.0, 1)
    else:
        rec.peak_mem_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def preflight_plan(plan: Plan, results_root: Path, iters: int = 2, device: str = "cpu",
                   use_cache: bool = False, on_result=None) -> list[Preflight | dict]:
    """Preflight every distinct run of a paper-scale plan, one after another in this process.
    With ``use_cache`` a run whose cached record passed with at least ``iters`` iterations on the
    same device is not repeated (a failed one is: its cause may have been fixed outside the run key,
    e.g. a file put in place). Every record is written to the cache."""
    out = []
    for spec in plan.runs.values():
        hit = cached(results_root, spec.run_key) if use_cache else None
        if hit and hit.get("status") == "ok" and hit.get("iters", 0) >= iters \
                and hit.get("device", "").split(":")[0].split(" ")[0] == device:
            hit["cached"] = True
            out.append(hit)
            if on_result:
                on_result(hit)
            continue
        rec = run_one(spec, iters=iters, device=device)
        atomic_write_json(preflight_path(results_root, spec.run_key), rec.as_dict())
        out.append(rec.as_dict())
        if on_result:
            on_result(rec.as_dict())
    return out
