"""A run's live state (``runs/<key>/state.json``): what the job, its progress hook and the launchers
write and read while it runs. Below job, hooks and launch, so each of them can use it without importing
the others."""
from __future__ import annotations

import datetime as dt
import os
import socket
from pathlib import Path
from typing import Any

from bench.results import atomic_write_json, read_json_dict


def write_state(work_dir: Path, **state: Any) -> None:
    """Replace the run's state.json (atomic, not fsync'd: progress), stamped with who wrote it."""
    from bench.proc import self_identity

    state.setdefault("pid", os.getpid())
    state.setdefault("host", socket.gethostname())
    state.setdefault("proc", self_identity())  # host, boot, start time, command line: `bench cancel` checks them
    state["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(Path(work_dir) / "state.json", state, durable=False)


def read_state(work_dir: str | Path) -> dict:
    """The run's state.json as a mapping ({} if missing, unreadable, or not a mapping)."""
    return read_json_dict(Path(work_dir) / "state.json")
