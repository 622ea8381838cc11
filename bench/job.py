"""The job body: train one run with mmengine's Runner, evaluate it with COCO metrics, measure its
params / FLOPs / speed, and write one result file per row it serves.

Runs in whatever process the executor gives it (in-process, a submitit local subprocess, a SLURM
task). A failure of any kind is written as a failed result with its reason, then re-raised so the
executor (and SLURM) also see the job as failed.
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from bench.plan import RunSpec, metric_list
from bench.results import Measurement, Result, atomic_write_json, write_result

COCO_KEYS = {  # mmdet CocoMetric key suffix -> bench metric suffix
    "mAP": "AP", "mAP_50": "AP50", "mAP_75": "AP75", "mAP_s": "APs", "mAP_m": "APm", "mAP_l": "APl"}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> Optional[str]:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu: {cpu_model()} ({torch.get_num_threads()} threads)"


def log_tail(work_dir: Path, n: int = 20) -> list[str]:
    logs = sorted(Path(work_dir).glob("train/*/*.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return []
    return logs[-1].read_text(errors="replace").splitlines()[-n:]


def write_state(work_dir: Path, **state: Any) -> None:
    state.setdefault("pid", os.getpid())
    state.setdefault("host", socket.gethostname())
    state["updated"] = _now()
    atomic_write_json(Path(work_dir) / "state.json", state, durable=False)  # progress: atomic, not fsync'd


# --------------------------------------------------------------------------------- measurements
def count_trainable(model) -> int:
    """Trainable parameters after ``model.train()`` (frozen backbone stages excluded), as the papers count."""
    model.train()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def measure_flops(model, data: dict) -> tuple[Optional[float], str]:
    """GFLOPs of one forward pass on a preprocessed sample (mmengine's FlopAnalyzer)."""
    import torch
    from mmengine.analysis import FlopAnalyzer

    model.eval()
    try:
        inputs = data["inputs"]
        samples = data["data_samples"]

        class _Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                return self.m._forward(x, samples)

        analyzer = FlopAnalyzer(_Wrap(model), (inputs,))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        total = analyzer.total()
        skipped = analyzer.unsupported_ops()
        note = "mmengine FlopAnalyzer, one multiply-add counted as one FLOP (fvcore convention)"
        if skipped:
            note += "; uncounted ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(skipped.items()))
        return total / 1e9, note
    except Exception as e:  # noqa: BLE001 - FLOPs are best effort; say why they are missing
        return None, f"FLOPs not measured: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _protocol(warmup: int, timed: int, cuda: bool, where: str) -> str:
    return (f"batch 1, {warmup} warm-up + {timed} timed images, preprocessing+forward+postprocessing, "
            f"data loading excluded, {'CUDA-synchronised' if cuda else 'CPU'} timing, {where}")


class SpeedProbe:
    """Times ``model.test_step`` during the evaluation pass itself, so speed costs no extra inference.

    The protocol is mmdet's own benchmark tool's: batch 1, the first ``warmup`` images untimed, the
    next ``n_images`` timed one by one between synchronisations; the dataloader's fetch and the
    evaluator's bookkeeping (mask encoding) fall outside the timed span. Valid only for a
    single-process evaluation with batch 1; :func:`measure_speed` is the fallback."""

    def __init__(self, model, n_images: int, warmup: int = 3):
        import torch

        self.model, self.n, self.warmup = model, n_images, warmup
        self.cuda = torch.cuda.is_available() and next(model.parameters()).is_cuda
        self.calls = 0
        self.times: list[float] = []
        self._orig = model.test_step
        model.test_step = self  # an instance attribute shadows the method for the Runner's TestLoop

    def __call__(self, data):
        if self.calls >= self.warmup + self.n:
            return self._orig(data)
        _sync(self.cuda)
        t = time.perf_counter()
        out = self._orig(data)
        _sync(self.cuda)
        if self.calls >= self.warmup:
            self.times.append(time.perf_counter() - t)
        self.calls += 1
        return out

    def remove(self) -> None:
        self.model.__dict__.pop("test_step", None)

    def result(self) -> tuple[Optional[float], str]:
        if len(self.times) < self.n:
            return None, f"only {len(self.times)} of {self.n} images timed during evaluation"
        return len(self.times) / sum(self.times), _protocol(self.warmup, len(self.times), self.cuda,
                                                            "timed during the evaluation pass")


def measure_speed(model, dataloader, n_images: int, warmup: int = 3) -> tuple[Optional[float], str]:
    """Images per second, batch 1, after warm-up, with synchronised timing; data loading excluded.
    A separate pass over the split (cycled through again if it is smaller than warm-up + n_images);
    used when the evaluation pass could not be timed (multi-GPU evaluation, batch > 1)."""
    import itertools

    import torch

    model.eval()
    cuda = torch.cuda.is_available() and next(model.parameters()).is_cuda
    times = []
    batches = itertools.islice(itertools.cycle(dataloader), warmup + n_images) if len(dataloader) else []
    with torch.no_grad():
        for i, data in enumerate(batches):
            _sync(cuda)
            t = time.perf_counter()
            model.test_step(data)
            _sync(cuda)
            if i >= warmup:
                times.append(time.perf_counter() - t)
    if not times:
        return None, "no images to time"
    return len(times) / sum(times), _protocol(warmup, len(times), cuda, "separate timing pass after evaluation")


def coco_metrics(metrics: dict) -> dict[str, Optional[float]]:
    out: dict[str, Optional[float]] = {}
    for task, prefix in (("segm", "mask"), ("bbox", "box")):
        for k, suffix in COCO_KEYS.items():
            v = metrics.get(f"coco/{task}_{k}")
            if v is not None:
                out[f"{prefix}_{suffix}"] = round(float(v) * 100, 1) if float(v) >= 0 else None
    return out


# ---------------------------------------------------------------------------------------- run
def _versions() -> dict[str, str]:
    import importlib.metadata as md

    v = {}
    for lib in ("torch", "mmengine", "mmcv", "mmdet", "pycocotools", "numpy", "bench"):
        try:
            v[lib] = md.version(lib)
        except md.PackageNotFoundError:
            v[lib] = "missing"
    v["python"] = platform.python_version()
    return v


def _results_for(spec: RunSpec, base: dict) -> list[Path]:
    """Write each target row's result file, and the run's own record (``<work_dir>/result.json``),
    from which a later plan serves other rows that need the same run without training again."""
    atomic_write_json(Path(spec.work_dir) / "result.json", base)
    paths = []
    for t in spec.targets:
        others = [f"{o['table']}/{o['row']}" for o in spec.targets if o is not t]
        res = Result(table=t["table"], row=t["row"], label=t["label"], published=t["published"],
                     shared_with=others, **base)
        write_result(Path(t["path"]), res)
        paths.append(Path(t["path"]))
    return paths


def rank() -> int:
    """This process's rank in a multi-GPU run (SLURM task id or torchrun's RANK); 0 otherwise."""
    return int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0")))


def run(spec: RunSpec, resume: bool = True) -> list[str]:
    """Train, evaluate and measure one run; write its rows' result files. Returns their paths.

    In a multi-GPU run every rank trains and evaluates (mmengine's distributed runner); rank 0 alone
    measures speed and writes the state and result files."""
    if rank() != 0:
        _train_and_measure(spec, Path(spec.work_dir), resume)
        return []
    work = Path(spec.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    started, t0 = _now(), time.time()
    (work / "config.json").write_text(json.dumps(spec.config, indent=2, default=str))
    write_state(work, state="running", iter=0, max_iters=spec.overlay.get("iterations"), started=started)
    base: dict[str, Any] = dict(run_key=spec.run_key, config_hash=spec.config_hash, started_at=started,
                                work_dir=str(work), config=spec.config, overlay=spec.overlay,
                                git_commit=git_commit(), hostname=socket.gethostname())
    try:
        base["versions"] = _versions()
        measured, notes, measurement = _train_and_measure(spec, work, resume)
    except BaseException as e:  # noqa: BLE001 - every failure is recorded, then re-raised
        exit_ = requeue_exit(e)
        if exit_ is not None:
            # submitit's preemption/time-out handler checkpointed and requeued this job, then exits:
            # not a failure; the requeued job resumes from the last mmengine checkpoint
            write_state(work, state="requeued",
                        reason="preempted or timed out: requeued, resumes from its last checkpoint")
            raise exit_ from None
        reason = _failure_reason(e)
        status = "cancelled" if isinstance(e, KeyboardInterrupt) else "failed"  # Ctrl-C / job.cancel()
        base.update(status=status, failure=reason, log_tail=log_tail(work), finished_at=_now(),
                    wall_s=round(time.time() - t0, 1))
        _results_for(spec, base)
        write_state(work, state=status, reason=reason)
        raise
    base.update(status="done", measured=measured, measured_notes=notes, measurement=measurement,
                finished_at=_now(), wall_s=round(time.time() - t0, 1), log_tail=log_tail(work, 5))
    paths = _results_for(spec, base)
    write_state(work, state="done", iter=measurement.get("iterations"), max_iters=spec.overlay.get("iterations"))
    return [str(p) for p in paths]


def _finished_training(spec: RunSpec) -> Optional[dict]:
    """The finished training this run may evaluate instead of training (same train_key: the configs
    differ only in what inference reads), if the plan allows it and its checkpoint is complete."""
    import zipfile

    from bench.plan import trained_pointer

    after = getattr(spec, "reuse_training_after", None)
    if after is None or not getattr(spec, "train_key", ""):
        return None
    try:
        rec = json.loads(trained_pointer(spec.work_dir, spec.train_key).read_text())
    except (OSError, ValueError):
        return None
    if rec.get("run_key") == spec.run_key or rec.get("finished_at", 0) < after:
        return None
    return rec if zipfile.is_zipfile(rec.get("checkpoint", "")) else None


def _record_training(spec: RunSpec, work: Path, runner) -> None:
    """Publish this run's finished training for runs that differ from it only at test time."""
    from bench.plan import trained_pointer

    ckpt = _resume_checkpoint(work / "train")
    if ckpt:
        atomic_write_json(trained_pointer(spec.work_dir, spec.train_key), {
            "run_key": spec.run_key, "checkpoint": ckpt, "iterations": runner.iter, "epochs": runner.epoch,
            "finished_at": time.time(), "targets": [f"{t['table']}/{t['row']}" for t in spec.targets]})


def _resume_checkpoint(train_dir: Path) -> Optional[str]:
    """The newest complete checkpoint of an interrupted run. A kill can land while mmengine writes a
    checkpoint (truncated file) or between deleting an old one and updating ``last_checkpoint``, so
    the files themselves are checked rather than trusting ``last_checkpoint``."""
    import re
    import zipfile

    def number(p: Path) -> int:
        m = re.search(r"(\d+)\.pth$", p.name)
        return int(m.group(1)) if m else -1

    for p in sorted([*train_dir.glob("iter_*.pth"), *train_dir.glob("epoch_*.pth")], key=number, reverse=True):
        if zipfile.is_zipfile(p):  # torch.save's zip format: a truncated file has no central directory
            return str(p)
    return None


def requeue_exit(e: BaseException) -> Optional[SystemExit]:
    """The SystemExit of submitit's requeue handler if ``e`` is it or wraps it, else None.

    The handler runs inside whatever the job was doing when SIGUSR2/SIGTERM arrived; a library's bare
    ``except:`` can turn its SystemExit into another error. mmengine's ``Config.pretty_text`` does:
    a signal landing while a checkpoint is saved surfaces as "SyntaxError: Failed to format the
    config file" (seen in CI), with the SystemExit as its ``__context__``."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, SystemExit):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _failure_reason(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    if "loss become infinite or NaN" in str(e):
        return "NaN/inf loss (CheckInvalidLossHook): " + text
    if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
        return "out of memory: " + text
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (SIGINT: Ctrl-C or cancelled); a rerun resumes from the last checkpoint"
    tb = traceback.extract_tb(e.__traceback__)
    if tb and Path(tb[-1].filename).name == "checkloss_hook.py":
        return "NaN/inf loss (mmengine CheckInvalidLossHook stopped the training)"
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return text.splitlines()[0][:500] + where


def _train_and_measure(spec: RunSpec, work: Path, resume: bool):
    t0 = time.perf_counter()
    phases: dict[str, float] = {}  # wall seconds: setup (imports, data, Runner), train, test, measure
    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner

    from bench.resolve import register_all

    register_all()
    if spec.dataset == "synth":
        from bench.data import synth

        synth.generate(Path(spec.dataset_root), synth.SynthSpec(**spec.data_spec))
    # mmengine 0.10.7 calls torch.load without weights_only; torch >= 2.6 defaults it to True and refuses
    # mmengine's own checkpoints (they pickle the message hub). They are the run's own files: trusted.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    cfg = Config(copy.deepcopy(spec.config))  # the spec travels again if the job is requeued: keep it pristine
    cfg.work_dir = str(work / "train")
    if rank() == 0:
        cfg.dump(str(work / "config.py"))  # runnable as is: `python tools/train.py <work_dir>/config.py`
    resumed_from = _resume_checkpoint(work / "train") if resume else None
    trained = _finished_training(spec) if not resumed_from else None
    if trained:  # differs from a finished run only at test time: evaluate its weights, train nothing
        cfg.load_from = trained["checkpoint"]
        cfg.resume = False
    elif resumed_from:
        cfg.resume = True
        cfg.load_from = resumed_from
    cfg.train_cfg["val_interval"] = 10**9  # evaluate once, after training, with runner.test()
    if spec.gpus > 1:
        # one task per GPU; torch.distributed from the SLURM environment (or torchrun's)
        cfg.launcher = "slurm" if "SLURM_PROCID" in os.environ else "pytorch"
        cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "nccl"
    runner = Runner.from_cfg(cfg)
    phases["setup"] = time.perf_counter() - t0
    t = time.perf_counter()
    if not trained:
        runner.train()
        if rank() == 0 and spec.train_key:
            _record_training(spec, work, runner)
    phases["train"] = time.perf_counter() - t
    t = time.perf_counter()
    model = getattr(runner.model, "module", runner.model)  # unwrap DistributedDataParallel
    probe = None
    if spec.gpus <= 1 and cfg.test_dataloader.get("batch_size", 1) == 1:
        probe = SpeedProbe(model, spec.scale_cfg["speed_images"])
    try:
        metrics = runner.test()
    finally:
        if probe is not None:
            probe.remove()
    phases["test"] = time.perf_counter() - t
    if rank() != 0:
        return {}, {}, {}
    t = time.perf_counter()
    measured = coco_metrics(metrics)
    notes: dict[str, str] = {}
    ev = cfg.get("test_evaluator") or {}
    asked = {m for e in (ev if isinstance(ev, list) else [ev]) if isinstance(e, dict) for m in metric_list(e.get("metric"))}
    for prefix in [p for m, p in (("segm", "mask"), ("bbox", "box")) if m in asked]:
        if not any(k.startswith(prefix + "_") for k in measured):
            # mmdet's CocoMetric skips COCOeval when the model detects nothing: that is an AP of 0
            for k in ("AP", "AP50", "AP75"):
                measured[f"{prefix}_{k}"] = 0.0
                notes[f"{prefix}_{k}"] = "no detections on the evaluation split: AP is 0 (COCOeval was not run)"
    measured["params_M"] = count_trainable(model) / 1e6
    if spec.dataset == "synth":
        notes["params_M"] = (f"trainable parameters of the model as trained here: {len(cfg.train_dataloader.dataset.metainfo['classes'])} "
                             "classes (synthetic set) instead of the paper's, so class-dependent layers are smaller; "
                             "`bench profile` counts the paper's configuration")
    data = next(iter(runner.test_dataloader))
    data = model.data_preprocessor(data, False)
    gflops, flops_note = measure_flops(model, data)
    measured["gflops"] = round(gflops, 2) if gflops is not None else None
    if gflops is None:
        notes["gflops"] = flops_note
    elif spec.input_size:
        notes["gflops"] = f"at the run's input size {spec.input_size[0]}x{spec.input_size[1]}, not the paper's"
    fps, proto = probe.result() if probe is not None else (None, "")
    if fps is None:
        fps, proto = measure_speed(model, runner.test_dataloader, spec.scale_cfg["speed_images"])
    if fps is not None:
        measured["fps"] = round(fps, 2)
        measured["latency_ms"] = round(1000 / fps, 1)
    last = trained["checkpoint"] if trained else _resume_checkpoint(work / "train")
    if last:
        measured["model_size_MB"] = round(Path(last).stat().st_size / 2**20, 1)
        notes["model_size_MB"] = "size of the last checkpoint file (weights + optimizer state), MiB"
    if torch.cuda.is_available() and not trained:  # peak memory of this process's training
        measured["train_mem_GB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    phases["measure"] = time.perf_counter() - t
    input_size = spec.input_size
    n_train = len(runner.train_dataloader.dataset) if hasattr(runner.train_dataloader, "dataset") else None
    n_eval = len(runner.test_dataloader.dataset)
    measurement = Measurement(
        scale=spec.scale, dataset=spec.dataset if spec.dataset != "synth" else f"synth ({Path(spec.dataset_root).name})",
        dataset_root=spec.dataset_root, eval_split=spec.eval_split, train_images=n_train, eval_images=n_eval,
        iterations=trained["iterations"] if trained else runner.iter,
        epochs=None if spec.scale == "smoke" else (trained["epochs"] if trained else runner.epoch),
        batch_size=spec.batch_size,
        gpus=spec.gpus, lr=spec.lr, lr_scaled_from=spec.lr_scaled_from, input_size=input_size,
        pretrained=bool(spec.scale_cfg["pretrained"]), seed=int(spec.scale_cfg["seed"]),
        device=device_description(), speed_protocol=proto, flops_note=flops_note)
    m = measurement.model_dump(mode="json")
    m["resumed_from"] = resumed_from
    if trained:
        m["trained_by"] = (f"run {trained['run_key']} ({trained['checkpoint']}): the same training, "
                           "this row differs only at test time")
    m["phases_s"] = {k: round(v, 2) for k, v in phases.items()}
    return measured, notes, m
