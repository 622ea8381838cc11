"""A row's status that never raises: :func:`bench.resolve.row_status`, with a row whose config cannot be
built at all (a malformed base config, a file mmengine refuses to parse) reported as
``cannot resolve: <reason>`` instead of an mmengine traceback in `bench show`, `list`, `status`, `report`.

Statuses are cached on disk (``$BENCH_CACHE/row-status/<fingerprint>.json``), keyed by the row's model
spec, under a fingerprint of everything a status depends on: the OpenMMLab libraries' versions, bench's
model code and configs, and the resolving code. So `bench list` / `show` need neither mmengine nor
mmdet once a row has been resolved, and a change to any of those inputs resolves the rows again.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import json
from pathlib import Path

from bench.vocab import RowStatus

_BENCH = Path(__file__).resolve().parent


def _file_names(source: bytes) -> list[str]:
    """The names one source file registers (``@X.register_module()`` on a class, or its ``name=``)."""
    import ast

    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for d in node.decorator_list:
                if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "register_module":
                    kw = {k.arg: k.value for k in d.keywords}
                    name = kw.get("name")
                    names.append(name.value if isinstance(name, ast.Constant) else node.name)
    return names


#: bump when _file_names changes what it finds
_NAMES_VERSION = 1


def registered_names() -> list[str]:
    """The component names bench's own code registers, read from the source without importing it: what a
    row's status depends on in bench's model code. Each file's names are kept in the cache folder by the
    hash of its bytes (parsing the model files is ~0.1 s, a tenth of a cold report's own work)."""
    from bench.diskcache import cache_dir, read_json, write_json

    path = cache_dir() / "row-status" / f"names-v{_NAMES_VERSION}.json"
    known = read_json(path)
    known = known if isinstance(known, dict) else {}
    names, fresh = [], {}
    for f in sorted((_BENCH / "models").glob("*.py")) + [_BENCH / "hooks.py"]:
        source = f.read_bytes()
        key = hashlib.sha256(source).hexdigest()[:24]
        got = known.get(key)
        if not (isinstance(got, list) and all(isinstance(n, str) for n in got)):
            got = _file_names(source)
        fresh[key] = got
        names += got
    if any(k not in known for k in fresh):   # kept: other checkouts' files too, the newest first, 256 at most
        write_json(path, dict(list((fresh | {k: v for k, v in known.items() if k not in fresh}).items())[:256]))
    return sorted(set(names))


#: bump when what a status entry holds, or how it is derived, changes
_STORE_VERSION = 2


@functools.lru_cache(maxsize=1)
def _fingerprint() -> str:
    """Everything a row's status depends on besides its own spec: the libraries' versions (their
    registries and configs), the names bench registers, bench's configs and the resolving code."""
    import importlib.metadata as md

    h = hashlib.sha256(f"v{_STORE_VERSION};".encode())
    for lib in ("mmdet", "mmengine", "mmcv"):
        try:
            h.update(f"{lib}={md.version(lib)};".encode())
        except md.PackageNotFoundError:
            h.update(f"{lib}=missing;".encode())
    h.update(",".join(registered_names()).encode())
    for f in [_BENCH / "resolve.py", _BENCH / "rowstatus.py"] + sorted((_BENCH / "configs").rglob("*.py")):
        h.update(f.relative_to(_BENCH).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:20]


#: statuses of the shipped recipes' rows, computed when bench was committed (``python -m bench.rowstatus
#: --write-seed``): a fresh install lists its tables without building every config once. Used only
#: while its fingerprint is the running code's.
SEED = _BENCH / "data" / "row-status-seed.json"


def _seed_entries() -> dict:
    from bench.diskcache import read_json

    seed = read_json(SEED)
    if isinstance(seed, dict) and seed.get("fingerprint") == _fingerprint() and isinstance(seed.get("entries"), dict):
        return seed["entries"]
    return {}


class _Store:
    def __init__(self) -> None:
        from bench.diskcache import cache_dir, read_json

        self.path = cache_dir() / "row-status" / f"{_fingerprint()}.json"
        data = read_json(self.path)
        self.entries: dict[str, list] = _seed_entries() | (data if isinstance(data, dict) else {})
        self.dirty = False
        atexit.register(self.flush)

    def flush(self) -> None:
        if self.dirty:
            from bench.diskcache import read_json, write_json

            on_disk = read_json(self.path)  # another process may have added rows meanwhile
            merged = (on_disk if isinstance(on_disk, dict) else {}) | self.entries
            write_json(self.path, merged)
            self.dirty = False


@functools.lru_cache(maxsize=1)
def _store() -> _Store:
    return _Store()


def _key(row) -> str:
    spec = {"model": row.model.model_dump(mode="json") if row.model is not None else None,
            "reference_only": row.reference_only}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=repr).encode()).hexdigest()[:24]


def _resolve(row) -> tuple[RowStatus, str, str]:
    """(status, reason, config error): the config error is why the row's config does not build at all
    (``bench validate`` reports it as a recipe error), '' when it builds."""
    from bench.resolve import row_config, row_status

    config_error = ""
    try:
        row_config(row.model)
    except Exception as e:  # noqa: BLE001 - any failure to resolve is a recipe error
        config_error = str(e) or type(e).__name__
    try:
        status, reason = row_status(row)
    except Exception as e:  # noqa: BLE001 - whatever mmengine raises, the row is what is broken
        text = str(e).strip()
        first = text.splitlines()[0] if text else ""
        status, reason = RowStatus.MODEL_MISSING, f"cannot resolve: {type(e).__name__}: {first}"[:300]
    return status, reason, config_error


def row_check(row, cached: bool = True) -> tuple[RowStatus, str, str]:
    """(status, reason, config error) of a row, from the cache where the row was resolved before."""
    if row.reference_only is not None:
        return RowStatus.REFERENCE_ONLY, row.reference_only, ""
    if not cached:
        return _resolve(row)
    store, key = _store(), _key(row)
    hit = store.entries.get(key)
    if isinstance(hit, list) and len(hit) == 3:
        try:
            return RowStatus(hit[0]), str(hit[1]), str(hit[2])
        except ValueError:
            pass
    status, reason, config_error = _resolve(row)
    store.entries[key] = [status.value, reason, config_error]
    store.dirty = True
    return status, reason, config_error


def _hash_key(row) -> str:
    spec = {"model": row.model.model_dump(mode="json") if row.model is not None else None,
            "train": row.train.model_dump(mode="json")}
    return "hash:" + hashlib.sha256(json.dumps(spec, sort_keys=True, default=repr).encode()).hexdigest()[:24]


def cached_model_hash(row) -> str | None:
    """``bench.resolve.model_hash`` (the resolved config's hash), cached like the statuses; None for a
    row without a model or whose config does not resolve."""
    if row.model is None:
        return None
    store, key = _store(), _hash_key(row)
    hit = store.entries.get(key)
    if isinstance(hit, list) and len(hit) == 1:
        return hit[0]
    from bench.resolve import model_hash

    try:
        value = model_hash(row)
    except Exception:  # noqa: BLE001 - a row whose config does not resolve has no hash (its status says why)
        value = None
    store.entries[key] = [value]
    store.dirty = True
    return value


def safe_row_status(row, cached: bool = True) -> tuple[RowStatus, str]:
    status, reason, _ = row_check(row, cached)
    return status, reason


def write_seed(path: Path = SEED) -> int:
    """Resolve every row of the shipped recipes afresh and write the seed; returns the rows written."""
    from bench.diskcache import write_json
    from bench.recipes import Catalogue

    entries = {}
    for t in Catalogue(_BENCH.parent / "recipes").tables():
        for r in t.rows:
            if r.reference_only is None:
                status, reason, config_error = _resolve(r)
                entries[_key(r)] = [status.value, reason, config_error]
            if r.model is not None:
                from bench.resolve import model_hash

                try:
                    entries[_hash_key(r)] = [model_hash(r)]
                except Exception:  # noqa: BLE001
                    entries[_hash_key(r)] = [None]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"fingerprint": _fingerprint(), "entries": dict(sorted(entries.items()))})
    return len(entries)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write-seed"]:
        print(f"{SEED}: {write_seed()} rows, fingerprint {_fingerprint()}")
    else:
        sys.exit("usage: python -m bench.rowstatus --write-seed")
