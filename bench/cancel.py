"""Cancel: stop the queued or running jobs of table rows, whoever launched them (a local executor or
SLURM), and record each row as cancelled. Above launch and cluster, so neither imports the other."""
from __future__ import annotations

import datetime as dt
import os
import re
import signal
from pathlib import Path
from typing import Any

from bench import proc
from bench.launch import pending_path
from bench.results import Result, read_json_dict, write_result
from bench.state import read_state


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


_RUN_KEY = re.compile(r"^[0-9a-f]{6,64}$")
_SLURM_ID = re.compile(r"^\d{1,12}(_\d{1,9})?$")


def _is_bench_job(pid: int, work_dir: Path, executor: str) -> bool:
    """Whether the live process ``pid`` runs this run's job: submitit's controller or task for the
    run's own submitit folder, or (inline) a `bench run` process."""
    words = proc.cmdline_text(pid, limit=4096).split()
    if executor == "local":
        folder = str(work_dir / "submitit")
        return any(w.strip("'\"") == folder for w in words) and any("submitit" in w for w in words)
    return any(Path(w).name == "bench" or w == "bench.cli" for w in words) and "run" in words


def _signal_verified(rec: Any, work_dir: Path, executor: str, what: str) -> str:
    """Send SIGTERM to the recorded process only if it verifiably still is this run's job; say what happened."""
    if not isinstance(rec, dict):
        return f"{what}: no process record (start time, command line): not signalled"
    ok, why = proc.verify(rec)
    pid = proc.parse_pid(rec.get("pid"))
    if ok and pid == os.getpid():
        return f"{what}: PID {pid} is this process: not signalled"
    if ok and not _is_bench_job(pid, work_dir, executor):
        ok, why = False, f"PID {pid} does not run this run's job ({proc.cmdline_text(pid, 80)!r})"
    if not ok:
        return f"{what}: not signalled: {why}"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return f"{what}: PID {pid} ended meanwhile"
    return f"{what}: sent SIGTERM to PID {pid}"


def cancel_rows(table, rows, scale: str, results_root: Path) -> list[str]:
    """Cancel the jobs of ``rows`` that have a pending record; write 'cancelled' results for them.

    The records come from a results folder, which may be shared or stale: a PID is signalled only if
    its process is verifiably the run's job (host, boot, start time and command line as recorded, and
    its command line runs this run's job); a SLURM id only if it looks like one (scancel asks SLURM,
    which owns it)."""
    from bench.results import result_path, run_dir

    lines: list[str] = []
    jobs: dict[str, dict] = {}
    for row in rows:
        path = result_path(results_root, scale, table.name, row.id)
        pend = pending_path(path)
        if not pend.exists():
            continue
        rec = read_json_dict(pend)
        run_key = rec.get("run_key")
        executor, job_id = rec.get("executor"), rec.get("job_id")
        if not isinstance(run_key, str) or not _RUN_KEY.match(run_key) or executor not in ("local", "inline", "slurm"):
            lines.append(f"{table.name}/{row.id}: malformed job record {pend}: removed, nothing signalled")
            pend.unlink(missing_ok=True)
            continue
        work = run_dir(results_root, scale, run_key)  # never a work_dir the record names elsewhere
        rec["work_dir"] = str(work)
        jobs.setdefault(f"{executor}:{job_id}", rec)
        state = read_state(work)
        it = state.get("iter")
        res = Result(status="cancelled", table=table.name, row=row.id, label=row.label, run_key=run_key,
                     config_hash="", published=dict(row.published), failure="cancelled by the user (bench cancel)",
                     finished_at=_now(), work_dir=str(work),
                     log_tail=[f"cancelled at iteration {it}"] if isinstance(it, int) and not isinstance(it, bool) else [])
        write_result(path, res)
        pend.unlink(missing_ok=True)
        lines.append(f"{table.name}/{row.id}: cancelled ({executor} job {job_id})")
    for key, rec in jobs.items():
        executor, job_id = key.split(":", 1)
        work = Path(rec["work_dir"])
        if executor == "slurm":
            if not _SLURM_ID.match(job_id):
                lines.append(f"  slurm job {job_id!r}: not a SLURM job id: not cancelled")
                continue
            from bench.cluster import cancel

            cancel([job_id])
            lines.append(f"  slurm job {job_id}: scancel")
            continue
        state = read_state(work)
        if state.get("state") in ("running", None) and state:
            lines.append("  " + _signal_verified(state.get("proc"), work, executor, "training process"))
        if executor == "local" and rec.get("job_proc"):
            lines.append("  " + _signal_verified(rec.get("job_proc"), work, executor, f"local job {job_id}"))
    return lines
