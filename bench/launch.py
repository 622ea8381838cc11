"""Launch: hand planned runs to an executor and keep a record a later process can reattach to.

Executors (one interface, like ``concurrent.futures``):
    inline  run in this process, one after another (debugging; a failure is recorded, the batch goes on)
    local   submitit's LocalExecutor: each run in its own process, at most ``max_parallel`` at a time;
            a run that needs k GPUs gets k of its own (CUDA_VISIBLE_DEVICES) or waits for them
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
from typing import Any, Callable, Optional

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

    os.environ.update(local_dist_env())
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


class LaunchError(RuntimeError):
    """A plan this executor cannot carry out (e.g. a run needs more GPUs than the machine has)."""


def gpu_ids() -> list[str]:
    """The CUDA GPUs a job started from here could use (ids as CUDA_VISIBLE_DEVICES names them),
    found without importing torch in the CLI (that import alone costs about 2 s per command)."""
    import importlib.metadata

    try:
        if "+cpu" in importlib.metadata.version("torch"):
            return []  # a CPU wheel sees no GPU, whatever the machine has
    except importlib.metadata.PackageNotFoundError:
        return []
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = []
        for x in (x.strip() for x in cvd.split(",")):
            if not x or x.startswith("-"):
                break  # CUDA stops at the first invalid id: '-1' or '' hides every GPU after it
            ids.append(x)
        return ids
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        return [str(i) for i in range(len(list(gpus.iterdir())))]
    import torch  # another accelerator stack (ROCm): ask torch

    return [str(i) for i in range(torch.cuda.device_count())]


def visible_gpus() -> int:
    return len(gpu_ids())


class GpuSlots:
    """Hands GPUs to local jobs: a job needing k GPUs gets k ids of its own (its CUDA_VISIBLE_DEVICES)
    or waits until k are free; a CPU job (k = 0) needs none."""

    def __init__(self, ids: list[str]):
        self.ids = list(ids)
        self.free = list(ids)

    def take(self, k: int) -> Optional[list[str]]:
        if k > len(self.free):
            return None
        got, self.free = self.free[:k], self.free[k:]
        return got

    def give(self, ids: list[str]) -> None:
        self.free += [i for i in ids if i not in self.free]
        self.free.sort(key=self.ids.index)


def check_local_gpus(runs: list[RunSpec], ids: Optional[list[str]] = None) -> None:
    """Refuse, before anything starts, a run that needs more GPUs than this machine shows."""
    ids = gpu_ids() if ids is None else ids
    for spec in runs:
        if spec.gpus > len(ids):
            rows = ", ".join(f"{t['table']}/{t['row']}" for t in spec.targets)
            shown = f"{len(ids)} GPU(s)" + (f" ({','.join(ids)})" if ids else "")
            fix = (f"Pass --gpus {len(ids)} (the paper's total batch is split over fewer GPUs), or use --cluster slurm."
                   if ids else "Run it on a GPU machine, or use --cluster slurm.")
            raise LaunchError(f"{rows}: the run needs {spec.gpus} GPU(s) and this machine shows {shown}. {fix}")


def local_executor(folder: Path, timeout_min: int, gpus: list[str]):
    """submitit's LocalExecutor for one run on the GPUs ``gpus`` (none: CPU; the job sees no GPU).
    One task per GPU; :func:`local_dist_env` turns submitit's task ids into torch.distributed's."""
    import submitit

    ex = submitit.LocalExecutor(folder=folder)
    params: dict = dict(timeout_min=timeout_min, tasks_per_node=max(1, len(gpus)), gpus_per_node=len(gpus))
    if all(g.isdigit() for g in gpus):
        params["visible_gpus"] = tuple(int(g) for g in gpus)
    else:  # GPU UUIDs or MIG devices: submitit only takes integers, so the job's shell exports them
        params["setup"] = [f"export CUDA_VISIBLE_DEVICES={','.join(gpus)}"]
    ex.update_parameters(**params)
    return ex


def local_dist_env(env: Optional[dict] = None) -> dict[str, str]:
    """torch.distributed's variables for one task of a multi-GPU local job (submitit runs one
    process per task and names them SUBMITIT_LOCAL_*); empty for a single-process job."""
    env = os.environ if env is None else env
    n = int(env.get("SUBMITIT_LOCAL_NTASKS", "1"))
    if env.get("SUBMITIT_EXECUTOR") != "local" or n <= 1:
        return {}
    return {"RANK": env["SUBMITIT_LOCAL_GLOBALID"], "LOCAL_RANK": env["SUBMITIT_LOCAL_LOCALID"],
            "WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
            # every task of the job shares the controller's id, so they agree on the port
            "MASTER_PORT": str(20000 + int(env.get("SUBMITIT_LOCAL_JOB_ID", "0")) % 20000)}


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
              poll_s: float = 1.0, timeout_min: int = 24 * 60, gpus: Optional[list[str]] = None) -> list[Outcome]:
    """Each run in its own process through submitit's LocalExecutor, ``max_parallel`` at a time; a run
    that needs GPUs gets its own (``gpus``: the ids to share out, default those visible here)."""
    slots = GpuSlots(gpu_ids() if gpus is None else gpus)
    check_local_gpus(runs, slots.ids)
    queue = list(runs)
    active: list[tuple[RunSpec, Any, list[str]]] = []
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
                spec = queue[0]
                if not any(pending_path(t["path"]).exists() for t in spec.targets):
                    queue.pop(0)
                    outcomes.append(Outcome(spec, False, "cancelled before it started (bench cancel)"))
                    continue
                if spec.train_key and any(a[0].train_key == spec.train_key for a in active):
                    break  # differs from a running job only at test time: waits to evaluate its training
                got = slots.take(spec.gpus)
                if got is None:
                    break  # waits (in order) until a running job gives its GPUs back
                queue.pop(0)
                folder = Path(spec.work_dir) / "submitit"
                job = local_executor(folder, timeout_min, got).submit(_job_entry, spec)
                mark_pending(spec, "local", str(job.job_id), str(folder))
                active.append((spec, job, got))
            # wake up soon after a job ends (a cheap process check), report progress every poll_s
            deadline = time.monotonic() + poll_s
            while time.monotonic() < deadline and not interrupted and not any(a[1].done() for a in active):
                time.sleep(0.05)
            for entry in list(active):
                spec, job, got = entry
                if on_progress:
                    on_progress(spec, read_state(spec.work_dir))
                if not job.done():
                    continue
                active.remove(entry)
                slots.give(got)
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
            for spec, job, _ in active:
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
