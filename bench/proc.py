"""Process identity: which process a recorded PID really is.

A PID alone names nothing durable: it is reused once its process ends, and a results folder on a shared
disk may hold any number at all (``-1`` signals every process the user owns). Wherever bench records a
process it may later signal or trust as alive (``state.json``, pending job records, run locks), it
records the process's *identity*: host, kernel boot id, PID, start time (field 22 of ``/proc/<pid>/stat``,
clock ticks since boot) and a hash of its command line. A recorded process is "the same process" only
if all of them still match; anything else (another host, a reused PID, a malformed record) is not.
"""
from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Any, Optional

PID_MAX = 4194304  # the kernel's upper bound on pid_max (2**22)


def parse_pid(value: Any) -> Optional[int]:
    """A PID bench may act on: a plain int in 2..PID_MAX (never 0, 1, negative, a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 < value <= PID_MAX else None


def boot_id() -> Optional[str]:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def start_ticks(pid: int) -> Optional[int]:
    """The process's start time in clock ticks after boot, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) is in parentheses and may itself hold spaces or ')'
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def cmdline_hash(pid: int) -> Optional[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return hashlib.sha256(raw).hexdigest()[:16]


def cmdline_text(pid: int, limit: int = 300) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:limit]


def identity(pid: Optional[int] = None) -> dict:
    """The identity record of ``pid`` (default: this process); without start/cmd if /proc lacks it."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "host": socket.gethostname(), "boot_id": boot_id(), "start": start_ticks(pid),
            "cmd": cmdline_hash(pid), "cmdline": cmdline_text(pid)}


_SELF: dict[int, dict] = {}


def self_identity() -> dict:
    """This process's identity (computed once per process)."""
    pid = os.getpid()
    if pid not in _SELF:
        _SELF[pid] = identity(pid)
    return _SELF[pid]


def verify(rec: Any) -> tuple[bool, str]:
    """(True, '') if ``rec`` (an identity record) is a process running now on this host; else (False, why)."""
    if not isinstance(rec, dict):
        return False, "no process record"
    pid = parse_pid(rec.get("pid"))
    if pid is None:
        return False, f"not a valid PID: {rec.get('pid')!r}"
    host = socket.gethostname()
    if rec.get("host") != host:
        return False, f"PID {pid} was recorded on host {rec.get('host')!r}, this is {host!r}"
    if rec.get("boot_id") and boot_id() and rec["boot_id"] != boot_id():
        return False, f"PID {pid} was recorded before this machine rebooted"
    if not isinstance(rec.get("start"), int) or not rec.get("cmd"):
        return False, f"PID {pid} has no recorded start time and command line: cannot tell it is the job"
    now = start_ticks(pid)
    if now is None:
        return False, f"PID {pid} is not running"
    if now != rec["start"]:
        return False, f"PID {pid} is another process now (it started at a different time)"
    if cmdline_hash(pid) != rec["cmd"]:
        return False, f"PID {pid} runs a different command line than the job did"
    return True, ""


def alive(rec: Any) -> Optional[bool]:
    """Whether the recorded process still runs: True / False, or None where this host cannot tell
    (recorded on another host, or a record too old to carry a start time)."""
    if not isinstance(rec, dict) or parse_pid(rec.get("pid")) is None:
        return None
    if rec.get("host") != socket.gethostname():
        return None
    ok, _ = verify(rec)
    if ok:
        return True
    if not isinstance(rec.get("start"), int):
        return None if start_ticks(rec["pid"]) is not None else False
    return False
