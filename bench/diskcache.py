"""bench's on-disk cache folder and its small JSON records, written atomically, read defensively.

``$BENCH_CACHE``, else ``$XDG_CACHE_HOME/bench``, else ``~/.cache/bench``. Everything here is derived
data (parsed recipes, row statuses, parsed base configs, profiles): deleting the folder only costs
time. No heavy imports.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional


def cache_dir() -> Path:
    env = os.environ.get("BENCH_CACHE")
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bench"


def read_json(path: Path, max_bytes: int = 64 << 20) -> Optional[Any]:
    """The JSON in ``path``, or None if it is missing, too large or unreadable (a cache miss)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        if len(raw) > max_bytes:
            return None
        return json.loads(raw)
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: Any) -> None:
    """Write a cache record atomically; a cache that cannot be written is no error (it is a cache)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":"), default=str))
        os.replace(tmp, path)
    except OSError:
        pass


def sources_fingerprint(*files: Path) -> str:
    """sha256 (16 hex) of source files' names and bytes: a cache entry derived by that code is valid
    only while the code is unchanged."""
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.name).encode())
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"missing")
    return h.hexdigest()[:16]
