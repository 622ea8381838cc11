"""Launch: hand planned runs to an executor and keep a record a later process can reattach to.

Executors (one interface, like ``concurrent.futures``):
    inline  run in this process, one after another (debugging; a failure is recorded, the batch goes on)
    local   submitit's LocalExecutor: each run in its own process, at most ``max_parallel`` at a time
    slurm   submitit's SlurmExecutor: one job array per resource shape; returns at once

For every row a run serves, ``results/<scale>/<table>/<row>.pending.json`` records the run key, the
executor, its job id and folder; the job replaces it by the row's result file. ``bench status`` reads
these files (and the run's ``state.json``) from any process.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from bench.plan import RunSpec
from bench.results import Result, atomic_write_json, read_result, ResultReadError, write_result


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def pending_path(result_file: str | Path) -> Path:
    p = Path(result_file)
    return p.with_name(p.stem + ".pending.json")


def mark_pending(spec: RunSpec, executor: str, job_id: Optional[str], folder: Optional[str]) -> None:
    rec = {"run_key": spec.run_key, "work_dir": spec.work_dir, "executor": executor, "job_id": job_id,
           "folder": folder, "submitted_at": _now(), "targets": [f"{t['table']}/{t['row']}" for t in spec.targets]}
    atomic_write_json(Path(spec.work_dir) / "job.json", rec)
    for t in spec.targets:
        atomic_write_json(pending_path(t["path"]), rec)


def clear_pending(spec: RunSpec) -> None:
    for t in spec.targets:
        try:
            pending_path(t["path"]).unlink()
        except FileNotFoundError:
            pass


def record_unfinished(spec: RunSpec, reason: str, status: str = "failed") -> None:
    """A job that died without writing its results (killed, lost): write failed/cancelled records."""
    from bench.job import log_tail

    for t in spec.targets:
        path = Path(t["path"])
        try:
            if read_result(path).run_key == spec.run_key:
                continue  # the job did write it
        except (FileNotFoundError, ResultReadError):
            pass
        others = [f"{o['table']}/{o['row']}" for o in spec.targets if o is not t]
        write_result(path, Result(status=status, table=t["table"], row=t["row"], label=t["label"],
                                  run_key=spec.run_key, config_hash=spec.config_hash, published=t["published"],
                                  failure=reason, log_tail=log_tail(Path(spec.work_dir)), finished_at=_now(),
                                  work_dir=spec.work_dir, config=spec.config, overlay=spec.overlay,
                                  shared_with=others))


def _job_entry(spec: RunSpec) -> list[str]:
    """What a submitted job executes (module-level so submitit can pickle it)."""
    from bench.job import run

    try:
        out = run(spec)
    except SystemExit:
        raise  # requeued by submitit: the job record stays pending
    except BaseException:
        clear_pending(spec)
        raise
    clear_pending(spec)
    return out


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _failure_of(spec: RunSpec) -> Optional[str]:
    """The failure reason the job itself recorded, if it got that far."""
    for t in spec.targets:
        try:
            res = read_result(Path(t["path"]))
        except (FileNotFoundError, ResultReadError):
            continue
        if res.run_key == spec.run_key and res.failure:
            return res.failure
    return None


@dataclass
class Outcome:
    spec: RunSpec
    ok: bool
    detail: str


Progress = Callable[[RunSpec, dict], None]


def read_state(work_dir: str | Path) -> dict:
    try:
        return json.loads((Path(work_dir) / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def visible_gpus() -> int:
    """CUDA GPUs a job started from here could use, without importing torch in the CLI (that import
    alone costs about 2 s of start-up and tear-down per command)."""
    import importlib.metadata

    try:
        if "+cpu" in importlib.metadata.version("torch"):
            return 0  # a CPU wheel sees no GPU, whatever the machine has
    except importlib.metadata.PackageNotFoundError:
        return 0
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = []
        for x in (x.strip() for x in cvd.split(",")):
            if not x or x.startswith("-"):
                break  # CUDA stops at the first invalid id: '-1' or '' hides every GPU after it
            ids.append(x)
        return len(ids)
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        return len(list(gpus.iterdir()))
    import torch  # another accelerator stack (ROCm): ask torch

    return torch.cuda.device_count()


def run_inline(runs: list[RunSpec], on_progress: Optional[Progress] = None) -> list[Outcome]:
    out = []
    for spec in runs:
        mark_pending(spec, "inline", str(os.getpid()), None)
        try:
            _job_entry(spec)
            out.append(Outcome(spec, True, "done"))
        except Exception as e:  # noqa: BLE001 - the job recorded the failure; the batch goes on
            out.append(Outcome(spec, False, f"{type(e).__name__}: {e}"))
        if on_progress:
            on_progress(spec, read_state(spec.work_dir) | {"finished": True})
    return out


def run_local(runs: list[RunSpec], max_parallel: int = 1, on_progress: Optional[Progress] = None,
              poll_s: float = 1.0, timeout_min: int = 24 * 60) -> list[Outcome]:
    """Each run in its own process through submitit's LocalExecutor, ``max_parallel`` at a time."""
    import submitit

    queue = list(runs)
    active: list[tuple[RunSpec, "submitit.Job"]] = []
    outcomes: list[Outcome] = []
    interrupted = False

    def _stop(signum, frame):  # Ctrl-C: cancel what runs, record it, keep checkpoints for resume
        nonlocal interrupted
        interrupted = True

    old = signal.signal(signal.SIGINT, _stop)
    for spec in queue:  # visible to `bench status` as queued until a slot frees
        mark_pending(spec, "local", None, str(Path(spec.work_dir) / "submitit"))
    try:
        while (queue or active) and not interrupted:
            while queue and len(active) < max_parallel:
                spec = queue.pop(0)
                if not any(pending_path(t["path"]).exists() for t in spec.targets):
                    outcomes.append(Outcome(spec, False, "cancelled before it started (bench cancel)"))
                    continue
                folder = Path(spec.work_dir) / "submitit"
                ex = submitit.LocalExecutor(folder=folder)
                ex.update_parameters(timeout_min=timeout_min)
                job = ex.submit(_job_entry, spec)
                mark_pending(spec, "local", str(job.job_id), str(folder))
                active.append((spec, job))
            # wake up soon after a job ends (a cheap process check), report progress every poll_s
            deadline = time.monotonic() + poll_s
            while time.monotonic() < deadline and not interrupted and not any(j.done() for _, j in active):
                time.sleep(0.05)
            for spec, job in list(active):
                if on_progress:
                    on_progress(spec, read_state(spec.work_dir))
                if not job.done():
                    continue
                active.remove((spec, job))
                try:
                    job.result()
                    outcomes.append(Outcome(spec, True, "done"))
                except Exception as e:  # noqa: BLE001
                    detail = _failure_of(spec) or _last_line(str(e)) or type(e).__name__
                    record_unfinished(spec, f"job {job.job_id} ended without a result: {detail}")
                    clear_pending(spec)
                    outcomes.append(Outcome(spec, False, detail))
                if on_progress:
                    on_progress(spec, read_state(spec.work_dir) | {"finished": True})
    finally:
        signal.signal(signal.SIGINT, old)
        if interrupted:
            for spec in queue:
                clear_pending(spec)
            for spec, job in active:
                job.cancel()
                record_unfinished(spec, "cancelled by the user (Ctrl-C); rerun to resume from the last checkpoint",
                                  status="cancelled")
                clear_pending(spec)
                outcomes.append(Outcome(spec, False, "cancelled"))
    return outcomes


def cancel_rows(table, rows, scale: str, results_root: Path) -> list[str]:
    """Cancel the jobs of ``rows`` that have a pending record; write 'cancelled' results for them."""
    from bench.results import result_path

    lines: list[str] = []
    jobs: dict[str, dict] = {}
    for row in rows:
        path = result_path(results_root, scale, table.name, row.id)
        pend = pending_path(path)
        if not pend.exists():
            continue
        rec = json.loads(pend.read_text())
        jobs.setdefault(f"{rec['executor']}:{rec['job_id']}", rec)
        state = read_state(rec["work_dir"])
        res = Result(status="cancelled", table=table.name, row=row.id, label=row.label, run_key=rec["run_key"],
                     config_hash="", published=dict(row.published), failure="cancelled by the user (bench cancel)",
                     finished_at=_now(), work_dir=rec["work_dir"],
                     log_tail=[f"cancelled at iteration {state.get('iter')}"] if state.get("iter") else [])
        write_result(path, res)
        pend.unlink(missing_ok=True)
        lines.append(f"{table.name}/{row.id}: cancelled ({rec['executor']} job {rec['job_id']})")
    for key, rec in jobs.items():
        executor, job_id = key.split(":", 1)
        if executor == "slurm":
            from bench.cluster import cancel

            cancel([job_id])
        elif executor in ("local", "inline"):
            state = read_state(rec["work_dir"])
            for pid in {state.get("pid"), int(job_id) if job_id.isdigit() and executor == "local" else None}:
                if pid and pid != os.getpid():
                    try:
                        os.kill(int(pid), signal.SIGTERM)
                    except ProcessLookupError:
                        pass
    return lines
