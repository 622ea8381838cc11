"""The report's render cache: content hashes, so a render redraws only what its inputs changed.

A report render is a pure function of its inputs: the table views (rows, cells, claims, provenance: every
field of every result they hold), each table's audit, the recipes, bench's own code and templates and the
versions of the libraries that draw and format (matplotlib, jinja2, pandas, tabulate...). So:

* each table page has a **content hash** (:func:`digest` of its view, its audit, its links, its figures'
  hashes and :func:`render_code_key`), stored beside the page in ``<table>.render.json`` with the hashes of its
  exports; a page whose hash is unchanged (and whose files are all still there) is neither rendered nor
  written, nor are its figures and exports;
* each **figure** is stored once per content under ``<scale>/.render-cache/figures/<hash>.<svg|png|pdf>``, the
  hash being that of exactly what it plots (``plots.PlotData``), so an unchanged figure is copied, never
  redrawn, whichever table or render asks for it;
* the page's **audit** (``audit_view.page_audit``: profile cache, claim checks, zoo metafiles, several seconds
  over the catalogue) is kept under ``.render-cache/audit/`` by a key of everything it reads: the recipes
  folder's files, bench's code, the library versions and the profile cache's file listing.

Everything lives under the reports folder (a new folder renders cold). Records are written atomically;
a torn or foreign record is a cache miss, never an error. The output of a cached render is byte for byte
that of a fresh one (tests/cli/test_report_cache.py), the "generated at" time of an unchanged page
being the time it was last written.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

#: bump to invalidate every record (a change of what a hash covers)
VERSION = 1
CACHE_DIR = ".render-cache"
#: libraries whose version changes a page, a figure or an export (or what the audit reads)
LIBRARIES = ("matplotlib", "pillow", "numpy", "jinja2", "markupsafe", "pandas", "tabulate", "pydantic", "pyyaml",
             "torch", "mmengine", "mmcv", "mmdet")
BENCH_DIR = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ hashing
def canon(obj: Any, _memo: Optional[dict] = None) -> Any:
    """A JSON-able, process-independent form of ``obj`` (dataclasses, pydantic models, paths, enums,
    sets sorted); an object it does not know is an error, never its ``repr`` (which may hold an address).
    An object met twice (a claim's row is also the table's row) is converted once."""
    t = type(obj)   # the exact built-in types first: most of a view is plain data
    if t is str or t is int or t is bool or obj is None:
        return obj
    if t is float:
        return obj if math.isfinite(obj) else repr(obj)
    if t is list or t is tuple:
        memo = {} if _memo is None else _memo
        return [canon(v, memo) for v in obj]
    if t is dict:
        memo = {} if _memo is None else _memo
        return ["dict", [[canon(k, memo), canon(v, memo)] for k, v in obj.items()]]
    if isinstance(obj, str) and not isinstance(obj, enum.Enum):
        return obj
    if isinstance(obj, (bool, int)) and not isinstance(obj, enum.Enum):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    memo = {} if _memo is None else _memo
    if isinstance(obj, (list, tuple)):
        return [canon(v, memo) for v in obj]
    if isinstance(obj, dict):
        return ["dict", [[canon(k, memo), canon(v, memo)] for k, v in obj.items()]]  # order kept: pages follow it
    if isinstance(obj, enum.Enum):
        return [type(obj).__name__, canon(obj.value, memo)]
    if isinstance(obj, Path):
        return ["path", str(obj)]
    if isinstance(obj, (set, frozenset)):
        return ["set", sorted((canon(v, memo) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))]
    hit = memo.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = [type(obj).__name__, {f.name: canon(getattr(obj, f.name), memo) for f in dataclasses.fields(obj)}]
    elif hasattr(obj, "model_dump") and hasattr(type(obj), "model_fields"):  # pydantic models
        out = [type(obj).__name__, _model_json(obj) or canon(obj.model_dump(mode="python"), memo)]
    else:
        raise TypeError(f"render cache: cannot hash a {type(obj).__name__}")
    memo[id(obj)] = (obj, out)   # the object is kept alive with its id, so the id cannot be reused
    return out


def _model_json(obj: Any) -> Optional[list]:
    """A pydantic model as JSON written by pydantic's Rust code (its ``model_dump``, then ``to_json``): a view's
    recipe rows walked by :func:`canon` were three quarters of a cold render's view hashing. NaN and the
    infinities are written as such (a model's own JSON writes null, as for None). Field order is the model's,
    a dict's its own (as :func:`canon` keeps it). None where a value has no JSON form: :func:`canon` then walks
    the dump, and says what it cannot hash."""
    from pydantic_core import PydanticSerializationError, to_json

    try:
        return ["json", to_json(obj.model_dump(mode="python"), inf_nan_mode="constants").decode()]
    except PydanticSerializationError:
        return None


def digest(*parts: Any) -> str:
    text = json.dumps(canon(list(parts)), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tree_hash(root: Path, pattern: str = "*") -> str:
    """Names and bytes of every file under ``root`` (caches and editor droppings excepted)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob(pattern) if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in rel or rel.endswith((".pyc", ".tmp")) or "/." in f"/{rel}":
            continue
        h.update(rel.encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version}
    for lib in LIBRARIES:
        try:
            out[lib] = md.version(lib)
        except md.PackageNotFoundError:
            out[lib] = "missing"
    return out


#: what turns a view, an audit and plot data into bytes, besides bench/report/ (templates included): the
#: vocabulary (metric labels and units) and bench's version; and the audit's rule texts the page prints
RENDER_FILES = ("__init__.py", "vocab.py")


@functools.lru_cache(maxsize=1)
def render_code_key() -> str:
    """The code and templates that render pages, figures and exports, and the libraries' versions. The
    views themselves are rebuilt by every render (from the current code), so their hashes cover the rest."""
    from bench import __version__

    h = hashlib.sha256(_tree_hash(BENCH_DIR / "report").encode())
    for name in RENDER_FILES:
        h.update(name.encode() + b"\0" + (BENCH_DIR / name).read_bytes() + b"\0")
    from bench.audit import CLAIM_RULE, PRECISION_RULE, ZOO_RULE

    return digest(VERSION, __version__, h.hexdigest(), [CLAIM_RULE, PRECISION_RULE, ZOO_RULE], _versions())


@functools.lru_cache(maxsize=1)
def code_key() -> str:
    """All of bench's code (every file of the package) and the libraries' versions: what an audit reads."""
    from bench import __version__

    return digest(VERSION, __version__, _tree_hash(BENCH_DIR), _versions())


def audit_key(catalogue) -> Optional[str]:
    """Everything ``audit_view.page_audit`` reads: the recipes, bench's code, the libraries (mmdet's zoo
    metafiles and configs come with its version) and the profile cache's files (``bench audit`` fills it)."""
    if catalogue is None:
        return None
    from bench.resolve import cache_dir

    profiles = cache_dir() / "profiles"
    listing = []
    if profiles.is_dir():
        for entry in sorted(os.scandir(profiles), key=lambda e: e.name):
            st = entry.stat()
            listing.append([entry.name, st.st_size, st.st_mtime_ns])
    return digest("audit", code_key(), str(Path(catalogue.root).resolve()), _tree_hash(Path(catalogue.root)),
                  str(cache_dir().resolve()), listing)


# ------------------------------------------------------------------------------------ records
def cache_dir(root: Path) -> Path:
    """The render cache of the reports of one scale (``root``: ``<reports>/<scale>``)."""
    return Path(root) / CACHE_DIR


def read_record(path: Path) -> dict:
    """A record written by :func:`write_record`, or {} (missing, torn, foreign, older version)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == VERSION else {}


def write_record(path: Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": VERSION, **data}, indent=1), encoding="utf-8")  # key order kept
    os.replace(tmp, path)


def copy_atomic(src: Path, dst: Path) -> None:
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


# ------------------------------------------------------------------------------------ audit
def _audit_of(record: dict):
    from bench.audit import AuditCell, ClaimCheck
    from bench.report.audit_view import PageAudit

    return PageAudit(cells=[AuditCell(**c) for c in record["cells"]],
                     claims=[ClaimCheck(**c) for c in record["claims"]], zoo=list(record["zoo"]))


def cached_page_audit(table, catalogue, root: Path, key: Optional[str]):
    """``audit_view.page_audit(table, catalogue)``, from ``.render-cache/audit/`` when ``key`` is unchanged."""
    from bench.report.audit_view import page_audit

    if key is None:
        return page_audit(table, catalogue)
    path = cache_dir(root) / "audit" / f"{table.name}.json"
    hit = read_record(path)
    if hit.get("key") == key:
        try:
            return _audit_of(hit)
        except (KeyError, TypeError):
            pass
    audit = page_audit(table, catalogue)
    try:
        data = {"key": key, "cells": [dataclasses.asdict(c) for c in audit.cells],
                "claims": [dataclasses.asdict(c) for c in audit.claims], "zoo": audit.zoo}
        back = json.loads(json.dumps(data, allow_nan=False))
        # kept only if it reads back as exactly what was computed (a tuple, an enum or NaN would not)
        if canon(_audit_of(back)) != canon(audit):
            return audit
    except (TypeError, ValueError):
        return audit
    write_record(path, data)
    return audit
