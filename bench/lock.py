"""One live job per run key: a lock file in the run's work dir (``runs/<run_key>/run.lock``).

The lock is an exclusive ``flock`` on the file, held by the training process for as long as it runs;
the kernel drops it when that process ends however it ends (``kill -9`` included), so a lock left
by a dead job is stale by construction and is taken over, never trusted. The file also records the
owner's identity (host, PID, start time, command line: :mod:`bench.proc`) for the message a second
command prints ("running in PID N on HOST"), and the owner refreshes its modification time every
``HEARTBEAT_S`` seconds: where ``flock`` does not reach across hosts (some network filesystems), a
record from another host whose heartbeat is younger than ``STALE_S`` still counts as held.

The file is never deleted (deleting a file another process has open and is about to lock would let
two processes each lock a different file); a released lock is an empty file.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Optional

from bench import proc

LOCK_NAME = "run.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0


class RunLocked(RuntimeError):
    """The run key is owned by another live job."""

    def __init__(self, owner: dict, work_dir: Path):
        self.owner, self.work_dir = owner, Path(work_dir)
        super().__init__(describe(owner, work_dir))


def describe(owner: dict, work_dir: Path) -> str:
    pid, host = owner.get("pid", "?"), owner.get("host", "?")
    since = f" since {owner['acquired_at']}" if owner.get("acquired_at") else ""
    return f"running in PID {pid} on {host}{since} (run {Path(work_dir).name})"


def lock_path(work_dir: str | Path) -> Path:
    return Path(work_dir) / LOCK_NAME


def _read_owner(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 16384)
        data = json.loads(raw.decode("utf-8", "replace")) if raw.strip() else {}
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _counts_as_held(owner: dict, mtime: float) -> bool:
    """A record whose flock is free: held only if its owner may live where flock does not reach."""
    if not owner:
        return False
    if owner.get("host") == socket.gethostname():
        return proc.alive(owner) is True  # same host: flock is authoritative, but a verified owner wins
    return time.time() - mtime < STALE_S  # another host: trust a fresh heartbeat only


def _flock(fd: int) -> bool:
    """Try the exclusive lock; False if another open file holds it. No flock support: True (the
    owner record decides)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF):
            return True
        raise


def holder(work_dir: str | Path) -> Optional[dict]:
    """The live owner of the run's lock, or None if it is free (or stale). Never blocks."""
    path = lock_path(work_dir)
    try:  # read-write: on NFS an exclusive flock (emulated by a POSIX lock) needs a writable descriptor
        fd = os.open(path, os.O_RDWR)
    except PermissionError:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
    except OSError:
        return None
    try:
        free = _flock(fd)
        owner = _read_owner(fd)
        if not free:
            return owner or {"pid": "?", "host": "?"}
        return owner if _counts_as_held(owner, os.fstat(fd).st_mtime) else None
    finally:
        os.close(fd)  # closing drops the probe's flock


class RunLock:
    """``with RunLock(work_dir): ...`` owns the run key, or raises :class:`RunLocked`."""

    def __init__(self, work_dir: str | Path, wait_s: float = 2.0):
        self.work_dir = Path(work_dir)
        self.path = lock_path(work_dir)
        self.wait_s = wait_s  # a probe (`holder`) holds the flock for microseconds: retry that long
        self.fd: Optional[int] = None
        self.stale: Optional[dict] = None  # the dead owner's record, if this lock was taken over
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    def acquire(self) -> "RunLock":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        try:
            while not _flock(fd):
                if time.monotonic() >= deadline:
                    raise RunLocked(_read_owner(fd) or {"pid": "?", "host": "?"}, self.work_dir)
                time.sleep(0.05)
            owner = _read_owner(fd)
            if _counts_as_held(owner, os.fstat(fd).st_mtime) and owner.get("pid") != os.getpid():
                raise RunLocked(owner, self.work_dir)
            self.stale = owner or None
            me = proc.self_identity() | {"acquired_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            blob = json.dumps(me).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, blob, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self._beat = threading.Thread(target=self._heartbeat, name="bench-run-lock", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self.fd is None:
            return
        self._stop.set()
        try:
            os.ftruncate(self.fd, 0)  # an empty lock file is a free one
        except OSError:
            pass
        os.close(self.fd)  # drops the flock
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
