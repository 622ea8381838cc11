"""Collect: read result files into pandas, next to the recipes' published numbers.

Corrupt or partial result files are reported in ``Collection.problems`` and never raise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from bench.recipes import Table
from bench.results import Result, ResultReadError, checkpoint_result_path, read_result, result_path
from bench.vocab import METRIC_KEYS, RunStatus


@dataclass
class RowState:
    table: str
    position: int
    row: str
    label: str
    row_status: str          # runnable / model missing / reference only
    reason: str
    run_status: str          # RunStatus value
    result: Optional[Result] = None
    progress: Optional[str] = None
    last_log: Optional[str] = None
    job: Optional[dict] = None
    checkpoint: Optional[Result] = None   # `bench eval` of a given checkpoint for this row (source: checkpoint)


@dataclass
class Collection:
    scale: str
    states: list[RowState]
    problems: list[str] = field(default_factory=list)


def _text(v) -> Optional[str]:
    return None if v is None else str(v)[:500]


def _last_log_line(work: Path) -> Optional[str]:
    try:
        logs = sorted(work.glob("train/*/*.log"), key=lambda p: p.stat().st_mtime)
        if not logs:
            return None
        lines = logs[-1].read_text(errors="replace").strip().splitlines()
    except OSError:
        return None
    return lines[-1] if lines else None


def _live_state(pending: dict) -> tuple[str, Optional[str], Optional[str]]:
    """(run status, progress, last log line) of a submitted run that has no result yet. The records are
    read as untrusted data: a PID counts as alive only if it is still the recorded process."""
    from bench import proc
    from bench.state import read_state

    work = Path(pending.get("work_dir", ""))
    state = read_state(work)
    last_log = _last_log_line(work)
    if pending.get("executor") == "slurm" and pending.get("job_id"):
        from bench.cluster import slurm_state

        sstate = slurm_state(str(pending["job_id"]))
        if sstate and sstate.startswith(("PENDING", "REQUEUED", "CONFIGURING")):
            return str(RunStatus.QUEUED), sstate, last_log
        if sstate and sstate.startswith("CANCELLED"):
            return str(RunStatus.CANCELLED), sstate, last_log
        if sstate and sstate.startswith(("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED")):
            return str(RunStatus.FAILED), sstate, last_log
    if pending.get("executor") != "slurm" and (not state or pending.get("job_id") is None):
        # queued here, or submitted and not started yet: only as long as the process that queued it lives
        launcher, job = pending.get("launcher"), pending.get("job_proc")
        if pending.get("job_id") is None and proc.alive(launcher) is False:
            return (str(RunStatus.NOT_RUN), f"was queued by PID {launcher.get('pid')} on {launcher.get('host')}, "
                    "which ended before starting it: rerun `bench run`", last_log)
        if pending.get("job_id") is not None and proc.alive(job) is False and proc.alive(launcher) is not True:
            return str(RunStatus.FAILED), "the job process ended before training started", last_log
    if not state or pending.get("job_id") is None:
        return str(RunStatus.QUEUED), None if pending.get("job_id") else "waiting for a free slot", last_log
    st = state.get("state")
    if st == "requeued":
        return str(RunStatus.QUEUED), _text(state.get("reason")), last_log
    if st == "running":
        if pending.get("executor") != "slurm":
            rec = state.get("proc") if isinstance(state.get("proc"), dict) else {
                "pid": state.get("pid"), "host": state.get("host")}
            gone = proc.alive(rec) is False
            if not gone and "proc" not in state:  # an older record: PID and host only
                import socket

                pid = proc.parse_pid(state.get("pid"))
                gone = state.get("host") == socket.gethostname() and pid is not None and proc.start_ticks(pid) is None
            if gone:
                return (str(RunStatus.FAILED), "process gone without a result (killed?); rerun resumes from the last "
                        "checkpoint", last_log)
        it, mx = state.get("iter"), state.get("max_iters")
        prog = f"iter {_text(it)}/{_text(mx)}" if mx else f"iter {_text(it)}"
        if isinstance(state.get("loss"), (int, float)) and not isinstance(state.get("loss"), bool):
            prog += f", loss {state['loss']}"
        return str(RunStatus.RUNNING), prog, last_log
    if st in (str(RunStatus.DONE), str(RunStatus.FAILED), str(RunStatus.CANCELLED)):
        return st, _text(state.get("reason")), last_log
    return str(RunStatus.QUEUED), _text(state.get("reason")), last_log


def _pending_record(pend: Path, results_root: Path, scale: str) -> Optional[dict]:
    """A pending job record, with its work dir pinned to the run dir its run key names (a record
    cannot point bench at folders elsewhere); None if it is malformed."""
    import re

    from bench.results import read_json_dict, run_dir

    rec = read_json_dict(pend)
    key = rec.get("run_key")
    if not isinstance(key, str) or not re.match(r"^[0-9a-f]{6,64}$", key):
        return None
    rec["work_dir"] = str(run_dir(results_root, scale, key))
    return rec


def table_states(table: Table, scale: str, results_root: Path, statuses=None) -> tuple[list[RowState], list[str]]:
    from bench.launch import pending_path
    from bench.rowstatus import safe_row_status as row_status

    states, problems = [], []
    for row in table.rows:
        st, reason = statuses[row.id] if statuses else row_status(row)
        rs = RowState(table.name, row.position, row.id, row.label, str(st), reason, str(RunStatus.NOT_RUN))
        path = result_path(results_root, scale, table.name, row.id)
        pend = pending_path(path)
        pending = None
        if pend.exists():
            pending = _pending_record(pend, results_root, scale)
            if pending is None:
                problems.append(f"{pend}: unreadable job record")
        if path.exists():
            try:
                rs.result = read_result(path)
                if rs.result.source != "trained":   # a checkpoint evaluation copied over a trained result
                    problems.append(f"{path}: holds a checkpoint evaluation (source: {rs.result.source}), not a "
                                    "training: not shown as trained here")
                    rs.result = None
                else:
                    rs.run_status = rs.result.status
                    if rs.result.log_tail:
                        rs.last_log = rs.result.log_tail[-1]
            except ResultReadError as e:
                problems.append(str(e))
                rs.run_status = str(RunStatus.FAILED)
                rs.reason = f"corrupt result file: {e}"
        rs.checkpoint = _checkpoint_result(results_root, scale, table.name, row.id, problems)
        if pending and (rs.result is None or rs.result.run_key != pending.get("run_key")):
            rs.job = pending
            rs.run_status, rs.progress, last = _live_state(pending)
            rs.last_log = last or rs.last_log
        states.append(rs)
    return states, problems


def _checkpoint_result(results_root: Path, scale: str, table: str, row: str, problems: list[str]) -> Optional[Result]:
    """The row's `bench eval` result, if there is a done one that says it is one (source: checkpoint)."""
    path = checkpoint_result_path(results_root, scale, table, row)
    if not path.exists():
        return None
    try:
        res = read_result(path)
    except ResultReadError as e:
        problems.append(str(e))
        return None
    if res.source != "checkpoint" or (res.table, res.row) != (table, row) or res.status != "done":
        problems.append(f"{path}: not a done checkpoint evaluation of {table}/{row}: ignored")
        return None
    return res


def collect(tables: list[Table], scale: str, results_root: Path) -> Collection:
    col = Collection(scale, [])
    for t in tables:
        s, p = table_states(t, scale, results_root)
        col.states += s
        col.problems += p
    return col


def frame(tables: list[Table], col: Collection) -> pd.DataFrame:
    """Long frame: one line per (table row, metric column of the table's published/measured cells)."""
    by_table = {t.name: t for t in tables}
    recs = []
    for s in col.states:
        t = by_table[s.table]
        row = t.row(s.row)
        res = s.result if s.result and s.result.status == "done" else None
        metrics = [c.key for c in t.metric_columns]
        for r in (res, s.checkpoint):
            if r:
                metrics += [k for k in r.measured if k not in metrics and k in METRIC_KEYS]
        for m in metrics:
            pub = row.published.get(m)
            meas = res.measured.get(m) if res else None
            recs.append({
                "table": s.table, "position": s.position, "row": s.row, "label": s.label,
                "row_status": s.row_status, "run_status": s.run_status, "metric": m,
                "in_paper_table": m in row.published or any(c.key == m for c in t.columns),
                "published": pub, "measured": meas,
                "delta": (meas - pub) if (pub is not None and meas is not None) else None,
                "scale": col.scale,
                "dataset": res.measurement.dataset if res and res.measurement else None,
                "iterations": res.measurement.iterations if res and res.measurement else None,
                "device": res.measurement.device if res and res.measurement else None,
                "config_hash": res.config_hash if res else None,
                # `bench eval` of a given checkpoint (released weights): its own column, never "measured"
                "checkpoint": s.checkpoint.measured.get(m) if s.checkpoint else None,
                "checkpoint_limit": s.checkpoint.measurement.eval_limit if s.checkpoint and s.checkpoint.measurement
                else None,
            })
    cols = ["table", "position", "row", "label", "row_status", "run_status", "metric", "in_paper_table",
            "published", "measured", "delta", "scale", "dataset", "iterations", "device", "config_hash",
            "checkpoint", "checkpoint_limit"]
    return pd.DataFrame.from_records(recs, columns=cols)


def wide(df: pd.DataFrame) -> pd.DataFrame:
    """One line per table row: status, then published / measured / delta for each metric."""
    if df.empty:
        return df
    d = df[df["in_paper_table"]]
    base = d.drop_duplicates(["table", "row"])[["table", "position", "row", "label", "row_status", "run_status", "scale"]]
    kinds = ["published", "measured", "delta"] + (["checkpoint"] if d["checkpoint"].notna().any() else [])
    piv = d.pivot_table(index=["table", "row"], columns="metric", values=kinds, aggfunc="first", dropna=False)
    piv.columns = [f"{m}:{kind}" for kind, m in piv.columns]
    order = [c for m in METRIC_KEYS for c in (f"{m}:{k}" for k in kinds) if c in piv.columns]
    out = base.merge(piv[order].reset_index(), on=["table", "row"], how="left")
    return out.sort_values(["table", "position"]).reset_index(drop=True)
