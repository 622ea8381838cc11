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
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from bench import proc
from bench.lock import RunLocked, describe, holder
from bench.plan import RunSpec
from bench.state import read_state
from bench.results import Result, atomic_write_json, read_json_dict, read_result, ResultReadError, write_result


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def pending_path(result_file: str | Path) -> Path:
    p = Path(result_file)
    return p.with_name(p.stem + ".pending.json")


def mark_pending(spec: RunSpec, executor: str, job_id: Optional[str], folder: Optional[str],
                 job_proc: Optional[dict] = None) -> None:
    """Record a queued or submitted run. ``launcher`` identifies this process (a queued row whose
    launcher died is not queued any more); ``job_proc`` the local job's process, which `bench cancel`
    signals only while it still is that process."""
    rec = {"run_key": spec.run_key, "work_dir": spec.work_dir, "executor": executor, "job_id": job_id,
           "folder": folder, "submitted_at": _now(), "targets": [f"{t['table']}/{t['row']}" for t in spec.targets],
           "launcher": proc.self_identity()}
    if job_proc:
        rec["job_proc"] = job_proc
    atomic_write_json(Path(spec.work_dir) / "job.json", rec)
    for t in spec.targets:
        atomic_write_json(pending_path(t["path"]), rec)


def clear_pending(spec: RunSpec) -> None:
    for t in spec.targets:
        try:
            pending_path(t["path"]).unlink()
        except FileNotFoundError:
            pass


def record_unfinished(spec: RunSpec, reason: str, status: str = "failed") -> Optional[str]:
    """A job that died without writing its results (killed, lost): write failed/cancelled records.
    Returns None, or where the record could not be written and why (a full disk): the caller says so,
    and the batch goes on."""
    from bench.job import log_tail

    try:
        _record_unfinished(spec, reason, status, log_tail)
    except OSError as e:
        return f"could not record it in {Path(spec.targets[0]['path']).parent}: {e.strerror or e}"
    return None


def _record_unfinished(spec: RunSpec, reason: str, status: str, log_tail) -> None:
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
    from bench.job import ResultNotRecorded, rank, run

    os.environ.update(local_dist_env())
    if rank() != 0:
        # another task of a multi-process run: rank 0 owns the run's records; this one may end first (it
        # measures nothing), and clearing the pending record then would show a running row as not run
        return run(spec)
    try:
        out = run(spec)
    except (SystemExit, RunLocked, ResultNotRecorded):
        # requeued by submitit: the job record stays pending; another live job owns the run key: its
        # records are not ours to clear; the failure could not be written: the pending record (and the
        # dead PID in state.json) is what still tells `bench status` the run ended without a result
        raise
    except BaseException:
        _clear_pending_quietly(spec)
        raise
    _clear_pending_quietly(spec)
    return out


def _clear_pending_quietly(spec: RunSpec) -> None:
    try:
        clear_pending(spec)
    except OSError:
        pass


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
    skipped: bool = False  # not started here: another live job owns the run key


Progress = Callable[[RunSpec, dict], None]




def locked_elsewhere(spec: RunSpec) -> Optional[str]:
    """'running in PID N on HOST ...' if another live job owns this run key, else None."""
    owner = holder(spec.work_dir)
    if owner is None or (owner.get("pid") == os.getpid() and owner.get("host") == proc.self_identity()["host"]):
        return None
    return describe(owner, Path(spec.work_dir))


def skip_locked(runs: list[RunSpec]) -> tuple[list[RunSpec], list[Outcome]]:
    """Split off the runs another live job owns (a second `bench run` of the same rows, or the orphan
    trainer of a killed `bench run`): they are not started again."""
    free, skipped = [], []
    for spec in runs:
        owner = locked_elsewhere(spec)
        if owner:
            skipped.append(Outcome(spec, False, f"skipped: {owner}", skipped=True))
        else:
            free.append(spec)
    return free, skipped


def start_clean(runs: list[RunSpec]) -> list[str]:
    """``--force``: each run starts from scratch. Its old work dir (checkpoints, logs) is moved aside to
    ``runs/<key>.replaced-<time>/``, never deleted; a run another live job owns is left alone (the
    launcher skips it). Returns one line per moved folder."""
    lines = []
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for spec in runs:
        work = Path(spec.work_dir)
        if not work.exists() or locked_elsewhere(spec):
            continue
        dest = work.with_name(f"{work.name}.replaced-{stamp}")
        n = 1
        while dest.exists():
            n += 1
            dest = work.with_name(f"{work.name}.replaced-{stamp}-{n}")
        os.rename(work, dest)
        lines.append(f"--force: moved the old work dir of run {work.name} aside to {dest}")
    return lines


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


def _bench_local_executor_class():
    """submitit's LocalExecutor, with bench's controller (:mod:`bench.local_controller`) in place of
    submitit's: the same controller protocol (submitit's ``start_controller`` environment), plus a
    record of how each task ended."""
    import shlex
    import subprocess

    import submitit
    from submitit.local.local import LocalJob

    class BenchLocalExecutor(submitit.LocalExecutor):
        def _submit_command(self, command: str):
            ntasks = self.parameters.get("tasks_per_node", 1)
            n_gpus = self.parameters.get("gpus_per_node", 0)
            visible = self.parameters.get("visible_gpus", ())
            gpus = range(n_gpus) if visible == () else visible[:n_gpus]
            setup = list(self.parameters.get("setup", ()))
            env = dict(os.environ)
            env.update(SUBMITIT_LOCAL_NTASKS=str(ntasks), SUBMITIT_LOCAL_COMMAND=command,
                       SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * self.parameters.get("timeout_min", 2.0))),
                       SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(self.parameters.get("signal_delay_s", 30))),
                       SUBMITIT_LOCAL_NODEID="0", SUBMITIT_LOCAL_JOB_NUM_NODES="1",
                       SUBMITIT_STDERR_TO_STDOUT="1" if self.parameters.get("stderr_to_stdout") else "",
                       SUBMITIT_EXECUTOR="local", CUDA_VISIBLE_DEVICES=",".join(str(k) for k in gpus),
                       SUBMITIT_LOCAL_WITH_SHELL="1" if setup else "")
            cmd: Any = [sys.executable, "-m", "bench.local_controller", str(self.folder)]
            if setup:
                cmd = " && ".join(setup + [shlex.join(cmd)])
            process = subprocess.Popen(cmd, shell=bool(setup), env=env)  # noqa: S602 - bench's own setup lines
            return LocalJob(folder=self.folder, job_id=str(process.pid), process=process, tasks=list(range(ntasks)))

    return BenchLocalExecutor


def local_executor(folder: Path, timeout_min: int, gpus: list[str], tasks: int = 1):
    """submitit's LocalExecutor for one run on the GPUs ``gpus`` (none: CPU; the job sees no GPU).
    One task per GPU, or ``tasks`` CPU processes (gloo) when there is none; :func:`local_dist_env`
    turns submitit's task ids into torch.distributed's."""
    ex = _bench_local_executor_class()(folder=folder)
    ntasks = len(gpus) if gpus else max(1, tasks)
    params: dict = dict(timeout_min=timeout_min, tasks_per_node=ntasks, gpus_per_node=len(gpus))
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


def _mark_or_outcome(spec: RunSpec, *args, **kw) -> Optional[Outcome]:
    """mark_pending, or the failed Outcome if the record cannot be written (a full disk)."""
    try:
        mark_pending(spec, *args, **kw)
    except OSError as e:
        return Outcome(spec, False, f"not started: could not write its job record in "
                                    f"{Path(spec.targets[0]['path']).parent}: {e.strerror or e}")
    return None


def run_inline(runs: list[RunSpec], on_progress: Optional[Progress] = None) -> list[Outcome]:
    runs, out = skip_locked(runs)
    for spec in runs:
        bad = _mark_or_outcome(spec, "inline", str(os.getpid()), None, job_proc=proc.self_identity())
        if bad:
            out.append(bad)
            continue
        try:
            _job_entry(spec)
            out.append(Outcome(spec, True, "done"))
        except RunLocked as e:  # another job took the run key between the check and the start
            out.append(Outcome(spec, False, f"skipped: {e}", skipped=True))
        except Exception as e:  # noqa: BLE001 - the job recorded the failure; the batch goes on
            out.append(Outcome(spec, False, f"{type(e).__name__}: {e}"))
        if on_progress:
            on_progress(spec, read_state(spec.work_dir) | {"finished": True})
    return out


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _killed_reason(spec: RunSpec, job) -> Optional[str]:
    """'killed (signal 9: SIGKILL)' when the job process died by a signal, as far as this launcher
    can see it: the exit status of the job's task (recorded by bench's controller), or that of the
    controller itself; else, a training process that is gone without writing anything."""
    codes = _task_exit_codes(job)
    sig = next((-c for c in codes if isinstance(c, int) and c < 0), None)
    if sig is None:
        ctl = getattr(getattr(job, "_process", None), "returncode", None)
        sig = -ctl if isinstance(ctl, int) and ctl < 0 else None
    if sig is not None:
        return f"killed (signal {sig}: {_signal_name(sig)})"
    state = read_state(spec.work_dir)
    if state.get("state") == "running" and proc.alive(state.get("proc")) is False:
        return f"killed: the training process (PID {state.get('pid')}) ended without a result or a recorded failure"
    return None


def _task_exit_codes(job) -> list:
    rec = read_json_dict(Path(job.paths.folder) / f"{job.job_id}_exit_codes.json") if hasattr(job, "paths") else {}
    codes = rec.get("exit_codes")
    return codes if isinstance(codes, list) else []


def _job_failure(spec: RunSpec, job, e: BaseException) -> Outcome:
    """The Outcome of a local job that ended with an error; records it unless another job owns the key."""
    text = str(e)
    if "RunLocked" in text:
        owner = locked_elsewhere(spec)
        return Outcome(spec, False, f"skipped: {owner or 'another job owns the run key'}", skipped=True)
    unrecorded = [ln.split("ResultNotRecorded:", 1)[1].strip() for ln in text.splitlines() if "ResultNotRecorded:" in ln]
    detail = (_failure_of(spec) or (unrecorded[-1] if unrecorded else None) or _killed_reason(spec, job)
              or _last_line(text) or type(e).__name__)
    not_recorded = record_unfinished(spec, f"job {job.job_id} ended without a result: {detail}")
    if not_recorded:
        return Outcome(spec, False, f"{detail} ({not_recorded})")  # the pending record stays
    _clear_pending_quietly(spec)
    return Outcome(spec, False, detail)


def run_local(runs: list[RunSpec], max_parallel: int = 1, on_progress: Optional[Progress] = None,
              poll_s: float = 1.0, timeout_min: int = 24 * 60, gpus: Optional[list[str]] = None) -> list[Outcome]:
    """Each run in its own process through submitit's LocalExecutor, ``max_parallel`` at a time; a run
    that needs GPUs gets its own (``gpus``: the ids to share out, default those visible here). A run
    another live job owns is skipped; a run that cannot even be recorded (a full disk) fails alone."""
    slots = GpuSlots(gpu_ids() if gpus is None else gpus)
    check_local_gpus(runs, slots.ids)
    queue, outcomes = skip_locked(list(runs))
    active: list[tuple[RunSpec, Any, list[str]]] = []
    interrupted = False

    def _stop(signum, frame):  # Ctrl-C: cancel what runs, record it, keep checkpoints for resume
        nonlocal interrupted
        interrupted = True

    old = signal.signal(signal.SIGINT, _stop)
    for spec in list(queue):  # visible to `bench status` as queued until a slot frees
        bad = _mark_or_outcome(spec, "local", None, str(Path(spec.work_dir) / "submitit"))
        if bad:
            queue.remove(spec)
            outcomes.append(bad)
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
                owner = locked_elsewhere(spec)
                if owner:  # started by another command while this one waited
                    queue.pop(0)
                    outcomes.append(Outcome(spec, False, f"skipped: {owner}", skipped=True))
                    continue
                got = slots.take(spec.gpus)
                if got is None:
                    break  # waits (in order) until a running job gives its GPUs back
                queue.pop(0)
                folder = Path(spec.work_dir) / "submitit"
                try:
                    job = local_executor(folder, timeout_min, got, getattr(spec, "tasks", 1)).submit(_job_entry, spec)
                except OSError as e:  # submitit writes the job's pickle and script first: a full disk
                    slots.give(got)
                    reason = f"not started: submitit could not write the job in {folder}: {e.strerror or e}"
                    not_recorded = record_unfinished(spec, reason)
                    if not not_recorded:
                        _clear_pending_quietly(spec)
                    outcomes.append(Outcome(spec, False, reason + (f" ({not_recorded})" if not_recorded else "")))
                    continue
                job_proc = proc.identity(int(job.job_id)) if str(job.job_id).isdigit() else None
                try:
                    mark_pending(spec, "local", str(job.job_id), str(folder), job_proc=job_proc)
                except OSError:
                    pass  # the queued record stays; the job itself reports how it ends
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
                    job.results()  # every task (one per process of a multi-process run)
                    outcomes.append(Outcome(spec, True, "done"))
                except Exception as e:  # noqa: BLE001
                    outcomes.append(_job_failure(spec, job, e))
                if on_progress:
                    on_progress(spec, read_state(spec.work_dir) | {"finished": True})
    finally:
        signal.signal(signal.SIGINT, old)
        if interrupted:
            for spec in queue:
                _clear_pending_quietly(spec)
            for spec, job, _ in active:
                job.cancel()
                record_unfinished(spec, "cancelled by the user (Ctrl-C); rerun to resume from the last checkpoint",
                                  status="cancelled")
                _clear_pending_quietly(spec)
                outcomes.append(Outcome(spec, False, "cancelled"))
    return outcomes
