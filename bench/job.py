"""The job body: train one run with mmengine's Runner, evaluate it with COCO metrics, measure its
params / FLOPs / speed, and write one result file per row it serves.

Runs in whatever process the executor gives it (in-process, a submitit local subprocess, a SLURM
task). A failure of any kind is written as a failed result with its reason, then re-raised so the
executor (and SLURM) also see the job as failed.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as dt
import errno
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from bench.plan import RunSpec, metric_list
from bench.state import write_state  # noqa: F401  (also used by callers of bench.job)
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


class ResultNotRecorded(RuntimeError):
    """The run failed and its failure could not be written either (a full disk); the message says
    why it failed and where it could not be recorded."""


# --------------------------------------------------------------------------------- measurements
def count_trainable(model) -> int:
    """Trainable parameters after ``model.train()`` (frozen backbone stages excluded), as the papers count."""
    model.train()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def measure_flops(model, data: dict) -> tuple[Optional[float], str]:
    """GFLOPs of one inference forward pass on a preprocessed sample, and how they were counted (which
    forward, which ops stay uncounted): bench/flops.py (mmengine's FlopAnalyzer plus mmcv's deformable convs)."""
    from bench.flops import measure_flops as _measure

    return _measure(model, data)


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


def evaluated_metrics(metrics: dict, cfg) -> tuple[dict[str, Optional[float]], dict[str, str]]:
    """(measured, notes) from ``runner.test()``'s metrics: the COCO cells of each IoU type the config's
    evaluator asks for, an AP of 0 (with the reason) where mmdet's CocoMetric skipped COCOeval because
    the model detected nothing."""
    measured = coco_metrics(metrics)
    notes: dict[str, str] = {}
    ev = cfg.get("test_evaluator") or {}
    asked = {m for e in (ev if isinstance(ev, list) else [ev]) if isinstance(e, dict) for m in metric_list(e.get("metric"))}
    for prefix in [p for m, p in (("segm", "mask"), ("bbox", "box")) if m in asked]:
        if not any(k.startswith(prefix + "_") for k in measured):
            for k in ("AP", "AP50", "AP75"):
                measured[f"{prefix}_{k}"] = 0.0
                notes[f"{prefix}_{k}"] = "no detections on the evaluation split: AP is 0 (COCOeval was not run)"
    return measured, notes


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
    from bench.plan import library_versions

    v = library_versions(("torch", "mmengine", "mmcv", "mmdet", "pycocotools", "numpy", "bench"))
    v["python"] = platform.python_version()
    return v


def _results_for(spec: RunSpec, base: dict, matches: Optional[dict] = None) -> list[Path]:
    """Write each target row's result file, and the run's own record (``<work_dir>/result.json``),
    from which a later plan serves other rows that need the same run without training again.
    ``matches``: the record of the run's per-image matches file, copied beside each result first."""
    from bench.matches import copy_beside

    atomic_write_json(Path(spec.work_dir) / "result.json", dict(base, matches=matches))
    paths = []
    for t in spec.targets:
        others = [f"{o['table']}/{o['row']}" for o in spec.targets if o is not t]
        row_matches = None
        if matches:
            row_matches = copy_beside(Path(spec.work_dir) / matches["file"], Path(t["path"]), matches)
        res = Result(table=t["table"], row=t["row"], label=t["label"], published=t["published"],
                     shared_with=others, matches=row_matches, **base)
        write_result(Path(t["path"]), res)
        paths.append(Path(t["path"]))
    return paths


def run_tasks(spec: RunSpec) -> int:
    """Processes the run trains with: its CPU tasks (``--tasks``), else one per GPU."""
    return max(1, getattr(spec, "tasks", 1) or 1, spec.gpus or 0)


def _has_sync_bn(cfg) -> bool:
    from bench.distributed import SYNC_BN_TYPES

    return any(f"'{t}'" in str(cfg.get("model")) for t in SYNC_BN_TYPES)


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
    from bench.lock import RunLock

    # one live job per run key: a second `bench run` of the same rows, or a rerun beside the orphan
    # trainer of a killed `bench run`, stops here (RunLocked) before it writes anything
    lock = RunLock(spec.work_dir).acquire()
    try:
        return _run_owned(spec, resume)
    finally:
        lock.release()


def _run_owned(spec: RunSpec, resume: bool) -> list[str]:
    work = Path(spec.work_dir)
    started, t0 = _now(), time.time()
    base: dict[str, Any] = dict(run_key=spec.run_key, config_hash=spec.config_hash, started_at=started,
                                work_dir=str(work), config=spec.config, overlay=spec.overlay,
                                git_commit=git_commit(), hostname=socket.gethostname())
    try:
        (work / "config.json").write_text(json.dumps(spec.config, indent=2, default=str))
        write_state(work, state="running", iter=0, max_iters=spec.overlay.get("iterations"), started=started)
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
        if _disk_full(e):
            removed = clean_partial_checkpoints(work / "train", since=t0)
            if removed:
                reason += f" (partial checkpoint removed: {', '.join(removed)})"
        try:
            tail = log_tail(work)
        except OSError:
            tail = []
        base.update(status=status, failure=reason, log_tail=tail, finished_at=_now(),
                    wall_s=round(time.time() - t0, 1))
        try:
            _results_for(spec, base)
            write_state(work, state=status, reason=reason)
        except OSError as not_written:
            where = Path(spec.targets[0]["path"]).parent if spec.targets else work
            msg = f"{reason}; could not record it in {where}: {not_written.strerror or not_written}"
            print(f"bench: run {spec.run_key} failed: {msg}", file=sys.stderr, flush=True)
            raise ResultNotRecorded(msg) from e
        raise
    matches = measurement.pop("_matches", None)
    measured, dropped = _finite_only(measured)
    for k in dropped:
        notes[k] = "measured a non-finite value (NaN or infinity): not a number, left empty"
    base.update(status="done", measured=measured, measured_notes=notes, measurement=measurement,
                finished_at=_now(), wall_s=round(time.time() - t0, 1), log_tail=log_tail(work, 5))
    try:
        paths = _results_for(spec, base, matches)
        write_state(work, state="done", iter=measurement.get("iterations"), max_iters=spec.overlay.get("iterations"))
    except OSError as not_written:
        where = Path(spec.targets[0]["path"]).parent if spec.targets else work
        msg = f"finished, but its result could not be written in {where}: {not_written.strerror or not_written}"
        print(f"bench: run {spec.run_key} {msg}", file=sys.stderr, flush=True)
        raise ResultNotRecorded(msg) from not_written
    return [str(p) for p in paths]


def _finite_only(measured: dict) -> tuple[dict, list[str]]:
    out, dropped = {}, []
    for k, v in measured.items():
        if v is not None and not math.isfinite(v):
            out[k] = None
            dropped.append(k)
        else:
            out[k] = v
    return out, dropped


def _disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or an error it wraps) is a full disk or quota."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _finished_training(spec: RunSpec) -> Optional[dict]:
    """The finished training this run may evaluate instead of training (same train_key: the configs
    differ only in what inference reads), if the plan allows it and its checkpoint is complete."""
    import zipfile

    from bench.plan import trained_pointer

    after = getattr(spec, "reuse_training_after", None)
    if after is None or not getattr(spec, "train_key", ""):
        return None
    from bench.results import read_json_dict

    rec = read_json_dict(trained_pointer(spec.work_dir, spec.train_key))
    if not rec or rec.get("run_key") == spec.run_key:
        return None
    finished = rec.get("finished_at", 0)
    if not isinstance(finished, (int, float)) or finished < after or not isinstance(rec.get("checkpoint"), str):
        return None
    ckpt = rec["checkpoint"]
    ok = zipfile.is_zipfile(ckpt) and verify_checkpoint(Path(ckpt))[0] and pickles_only_allowed(Path(ckpt))[0]
    return rec if ok else None


def _record_training(spec: RunSpec, work: Path, runner) -> None:
    """Publish this run's finished training for runs that differ from it only at test time."""
    from bench.plan import trained_pointer

    ckpt = _resume_checkpoint(work / "train")
    if ckpt:
        atomic_write_json(trained_pointer(spec.work_dir, spec.train_key), {
            "run_key": spec.run_key, "checkpoint": ckpt, "iterations": runner.iter, "epochs": runner.epoch,
            "finished_at": time.time(), "targets": [f"{t['table']}/{t['row']}" for t in spec.targets]})


def _resume_checkpoint(train_dir: Path, skipped: Optional[list[str]] = None) -> Optional[str]:
    """The newest complete, verified checkpoint of an interrupted run. A kill can land while mmengine
    writes a checkpoint (truncated file) or between deleting an old one and updating
    ``last_checkpoint``, and a disk can corrupt one (zeroed bytes keep the zip directory intact), so
    each file must match the checksum :class:`ChecksumHook` wrote after saving it; ``skipped``
    collects the ones refused, with why."""
    import zipfile

    for p in _checkpoints(train_dir):
        ok, why = verify_checkpoint(p) if zipfile.is_zipfile(p) else (False, "not a complete torch zip file")
        if ok:
            ok, why = pickles_only_allowed(p)
        if ok:
            return str(p)
        if skipped is not None:
            skipped.append(f"{p.name}: {why}")
    return None


# ------------------------------------------------------------------------------- checkpoint files
def _checkpoints(train_dir: Path) -> list[Path]:
    """iter_*.pth / epoch_*.pth in ``train_dir``, newest (highest number) first."""
    import re

    def number(p: Path) -> int:
        m = re.search(r"(\d+)\.pth$", p.name)
        return int(m.group(1)) if m else -1

    return sorted([*Path(train_dir).glob("iter_*.pth"), *Path(train_dir).glob("epoch_*.pth")], key=number, reverse=True)


def _sidecar(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".sha256")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksum(ckpt: Path) -> None:
    """``<checkpoint>.sha256``: '<sha256> <size>' of the file as saved (atomically written)."""
    from bench.results import atomic_write_json

    atomic_write_json(_sidecar(ckpt), {"sha256": file_sha256(ckpt), "size": ckpt.stat().st_size})


def verify_checkpoint(ckpt: Path) -> tuple[bool, str]:
    """(True, '') if ``ckpt`` matches the checksum written after it was saved; else (False, why)."""
    from bench.results import read_json_dict

    rec = read_json_dict(_sidecar(ckpt))
    if not rec:
        return False, "no checksum recorded after it was saved (incomplete, or not written by this bench)"
    try:
        size = ckpt.stat().st_size
        if rec.get("size") != size:
            return False, f"size {size} differs from the {rec.get('size')} bytes saved"
        if rec.get("sha256") != file_sha256(ckpt):
            return False, "checksum mismatch: the file changed after it was saved (corrupted)"
    except OSError as e:
        return False, f"unreadable: {e.strerror or e}"
    return True, ""


def clean_partial_checkpoints(train_dir: Path, since: float) -> list[str]:
    """Delete the checkpoint files this job began writing and never finished (no checksum: the save
    failed, e.g. on a full disk). Only files modified since ``since`` (this job's start) are touched."""
    removed = []
    for p in _checkpoints(train_dir):
        try:
            if p.stat().st_mtime >= since - 1 and not _sidecar(p).exists():
                p.unlink()
                removed.append(p.name)
        except OSError:
            continue
    return removed


class ChecksumHook:
    """An mmengine hook, registered after CheckpointHook (priority LOWEST): each checkpoint file the
    run saves gets its checksum beside it; the checksums of deleted ones (max_keep_ckpts) go too."""

    priority = "LOWEST"

    def __init__(self, train_dir: Path):
        self.train_dir = Path(train_dir)
        self._dir_mtime = None

    def _scan(self) -> None:
        try:
            mtime = self.train_dir.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._dir_mtime:
            return  # no file created or deleted since the last look
        for p in _checkpoints(self.train_dir):
            side = _sidecar(p)
            if not side.exists() or side.stat().st_mtime_ns < p.stat().st_mtime_ns:
                write_checksum(p)
        for side in self.train_dir.glob("*.pth.sha256"):
            if not side.with_name(side.name[: -len(".sha256")]).exists():
                side.unlink(missing_ok=True)
        self._dir_mtime = self.train_dir.stat().st_mtime_ns

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._scan()

    def after_train_epoch(self, runner) -> None:
        self._scan()

    def after_train(self, runner) -> None:
        self._scan()


def _mmengine_hook(train_dir: Path):
    """:class:`ChecksumHook` as a real mmengine Hook (built lazily: mmengine is imported by the job only)."""
    from mmengine.hooks import Hook

    cls = type("BenchChecksumHook", (ChecksumHook, Hook), {})
    return cls(train_dir)


def checkpoint_safe_globals() -> list:
    """What an mmengine 0.10.7 checkpoint pickles besides tensors and plain containers, allowed for
    ``torch.load(weights_only=True)``: the message hub's HistoryBuffer (numpy arrays and scalars
    inside), numpy's array reconstruction, dtypes and scalar types, and the config classes that
    ``meta`` may carry. Nothing here runs code when unpickled beyond building those objects."""
    import numpy as np
    from mmengine.config import ConfigDict
    from mmengine.logging import HistoryBuffer

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16,
                                           np.int8, np.uint8, np.bool_, np.uint16, np.uint32, np.uint64)]
    return [HistoryBuffer, ConfigDict, np.ndarray, np.dtype, _reconstruct, scalar, *dtypes,
            (_history_buffer_getattr, "builtins.getattr")]


def _history_buffer_getattr(obj, name):
    """The one ``getattr`` an mmengine checkpoint needs: HistoryBuffer's statistics methods (its class
    attribute ``_statistics_methods`` pickles ``getattr(HistoryBuffer, 'min')`` and the like). Any
    other getattr in a checkpoint is refused."""
    import pickle

    from mmengine.logging import HistoryBuffer

    allowed = {"min", "max", "mean", "current", *HistoryBuffer._statistics_methods}  # filled by __init__
    if obj is HistoryBuffer and isinstance(name, str) and name in allowed:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"checkpoint asks for getattr({obj!r}, {name!r}): refused")


def pickles_only_allowed(ckpt: Path) -> tuple[bool, str]:
    """(True, '') if the checkpoint's pickle names only allow-listed globals (read statically: nothing
    in it runs); else (False, which globals)."""
    import torch

    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            bad = torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt))
    except Exception as e:  # noqa: BLE001 - an unreadable pickle is simply not resumed from
        return False, f"unreadable pickle: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if bad:
        return False, "refused: it pickles code outside the checkpoint allow-list: " + ", ".join(sorted(bad)[:5])
    return True, ""


@contextlib.contextmanager
def safe_checkpoint_loading():
    """Every torch.load inside (mmengine's resume and load_from included) runs with
    ``weights_only=True`` and the allow-list above: a checkpoint is data, and a results folder may be
    shared, so a pickle that would import or call anything else is refused ("Unsupported global")."""
    import torch

    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


def job_evaluator(asked: str) -> tuple[str, str]:
    """(name, label) of the COCO evaluator this job uses: the one the plan chose, verified again on this
    machine (its cross-check is cached per version, so this is a file read once checked); pycocotools,
    the reference, when the asked one is missing or refused here, with the reason in the label."""
    from bench.evaluators import resolve

    try:
        c = resolve(asked)
        return c.name, c.label
    except Exception as e:  # noqa: BLE001 - EvaluatorError, or a cross-check that could not run here
        ref = resolve("pycocotools")
        return ref.name, f"{ref.label}; {asked} was asked, refused on this machine: {e}"


def evaluator_outcome(name: str, label: str, ran: list[str]) -> str:
    """The evaluator label a result records, given what actually ran COCOeval during the test
    (``bench.evaluators.use``'s list)."""
    if name != "pycocotools" and not any(r.startswith(name) for r in ran):
        # the swapped COCOeval was never called: no detections (CocoMetric skips COCOeval), no CocoMetric,
        # or its use_mp_eval (COCOevalMP, pycocotools)
        return label + "; not called: the test evaluator ran no COCOeval through it"
    if any(r.startswith("pycocotools") for r in ran):
        return label + "; left to pycocotools itself: " + ", ".join(r for r in ran if r.startswith("pycocotools"))
    return label


def _train_and_measure(spec: RunSpec, work: Path, resume: bool):
    t0 = time.perf_counter()
    phases: dict[str, float] = {}  # wall seconds: setup (imports, data, Runner), train, test, measure
    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner

    from bench.resolve import register_all

    register_all()
    dist_info, cpu_changes = None, []
    if run_tasks(spec) > 1:
        from bench import distributed

        # one task per GPU (NCCL) or per CPU share (gloo); bench starts the process group itself from the
        # SLURM, submitit or torchrun environment, so mmengine's launcher only labels it
        if spec.gpus and distributed.job_device() != "cuda":
            raise distributed.DistError(f"the run needs {spec.gpus} GPU(s) and this task sees no CUDA device "
                                        f"({distributed.job_device()}): use --tasks N to train with N CPU processes (gloo)")
        if distributed.world_size() != run_tasks(spec):
            raise distributed.DistError(
                f"the run needs {run_tasks(spec)} processes and this one sees a world of {distributed.world_size()} "
                "(RANK/WORLD_SIZE or SLURM's task variables): start it through `bench run` (local or slurm)")
        dist_info = distributed.init()
    if spec.dataset == "synth" and rank() == 0:
        from bench.data import synth

        synth.generate(Path(spec.dataset_root), synth.SynthSpec(**spec.data_spec))
    cfg = Config(copy.deepcopy(spec.config))  # the spec travels again if the job is requeued: keep it pristine
    cfg.work_dir = str(work / "train")
    if rank() == 0:
        cfg.dump(str(work / "config.py"))  # runnable as is: `python tools/train.py <work_dir>/config.py`
    refused: list[str] = []
    resumed_from = _resume_checkpoint(work / "train", refused) if resume and rank() == 0 else None
    trained = _finished_training(spec) if not resumed_from and rank() == 0 else None
    if dist_info:  # every rank resumes from (or evaluates) the checkpoint rank 0 chose, after it made the data
        from bench.distributed import broadcast

        resumed_from, trained, refused = broadcast((resumed_from, trained, refused))
    if trained:  # differs from a finished run only at test time: evaluate its weights, train nothing
        cfg.load_from = trained["checkpoint"]
        cfg.resume = False
    elif resumed_from:
        cfg.resume = True
        cfg.load_from = resumed_from
    cfg.train_cfg["val_interval"] = 10**9  # evaluate once, after training, with runner.test()
    if dist_info:
        cfg.launcher = "slurm" if "SLURM_PROCID" in os.environ else "pytorch"
        cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = dist_info["backend"]
        if dist_info["device"] == "cpu":
            plain = cfg.to_dict()
            cpu_changes = distributed.cpu_changes(plain)
            cfg = Config(plain)
    elif _has_sync_bn(cfg):
        cpu_changes = ["SyncBN -> BatchNormXd by mmengine (one process: revert_sync_batchnorm)"]
    runner = Runner.from_cfg(cfg)
    if dist_info:  # the iteration each rank starts from (after mmengine's resume): the same on every rank
        from bench.distributed import start_iter_hook

        runner.register_hook(start_iter_hook(dist_info), priority="LOWEST")
    if rank() == 0:  # rank 0 saves the checkpoints (mmengine's CheckpointHook is master-only): it checksums them
        runner.register_hook(_mmengine_hook(work / "train"), priority="LOWEST")
    phases["setup"] = time.perf_counter() - t0
    t = time.perf_counter()
    if not trained:
        with safe_checkpoint_loading():  # mmengine loads the resumed checkpoint inside train()
            runner.train()
        if rank() == 0 and spec.train_key:
            _record_training(spec, work, runner)
    phases["train"] = time.perf_counter() - t
    t = time.perf_counter()
    model = getattr(runner.model, "module", runner.model)  # unwrap DistributedDataParallel
    probe = None
    if run_tasks(spec) <= 1 and cfg.test_dataloader.get("batch_size", 1) == 1:
        probe = SpeedProbe(model, spec.scale_cfg["speed_images"])
    from bench import matches as matches_mod

    evaluator_name, evaluator_label = job_evaluator(getattr(spec, "evaluator", "pycocotools"))
    from bench.evaluators import use as use_evaluator

    try:
        # COCOeval's per-image matches are kept for the paired bootstrap of claims (bench/matches.py)
        from bench.distributed import gathered as gathered_results

        with safe_checkpoint_loading(), matches_mod.capture() as captured, use_evaluator(evaluator_name) as ran, \
                gathered_results() as gathered:
            metrics = runner.test()
    finally:
        if probe is not None:
            probe.remove()
    phases["test"] = time.perf_counter() - t
    evaluator_label = evaluator_outcome(evaluator_name, evaluator_label, ran)
    if rank() != 0:
        return {}, {}, {}
    t = time.perf_counter()
    measured, notes = evaluated_metrics(metrics, cfg)
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
        device=device_description(), evaluator=evaluator_label, speed_protocol=proto, flops_note=flops_note)
    m = measurement.model_dump(mode="json")
    m["resumed_from"] = resumed_from
    if refused:
        m["resume_refused"] = refused
    if trained:
        m["trained_by"] = (f"run {trained['run_key']} ({trained['checkpoint']}): the same training, "
                           "this row differs only at test time")
    m["phases_s"] = {k: round(v, 2) for k, v in phases.items()}
    from bench.distributed import record as dist_record

    m["distributed"] = dist_record(dist_info, spec, cfg.train_dataloader.get("batch_size"), cpu_changes)
    m["distributed"]["eval_gathered"] = dict(gathered)
    if dist_info:
        m["distributed"]["ranks"] = dist_info.get("ranks")
    if captured:
        m["_matches"] = matches_mod.save(work / "matches.npz", captured)
    return measured, notes, m
