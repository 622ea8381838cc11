"""From a recipe row to a full mmdet config: base config + row overrides (+ later a scale overlay).

Also answers, for ``bench list``/``show``, whether a row is runnable: every ``type`` its model config
names must be known to mmdet's registries (with ``bench.models`` imported). Importing mmdet costs
seconds, so the set of registered type names is cached on disk, keyed by the mmdet version and the
contents of ``bench/models``; the CLI's listing commands never import torch.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Iterator

from bench.recipes import ModelSpec, RecipeError, Row, Table
from bench.vocab import RowStatus

BENCH_DIR = Path(__file__).resolve().parent
BENCH_CONFIGS = BENCH_DIR / "configs"


from bench.diskcache import cache_dir  # noqa: E402,F401  (bench's cache folder; callers import it from here too)


def mmdet_configs_dir() -> Path:
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError("mmdet is not installed (run ./install.sh)")
    return Path(list(spec.submodule_search_locations)[0]) / ".mim" / "configs"


def config_file(ref: str) -> Path:
    """The config file a recipe names, inside one of the two config roots (mmdet's bundled configs,
    bench/configs). mmengine executes a Python config when it parses it, so a reference that leaves its
    root (``bench::../../x.py``, an absolute path, a symlink pointing out) is refused, never read."""
    scope, _, rel = ref.partition("::")
    root = (mmdet_configs_dir() if scope == "mmdet" else BENCH_CONFIGS).resolve()
    if Path(rel).is_absolute() or "\x00" in rel:
        raise RecipeError(f"config {ref!r}: must be a path inside {scope}'s config folder, not an absolute path")
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise RecipeError(f"config {ref!r} leaves {scope}'s config folder ({root}): refused (a recipe may only name "
                          "configs inside mmdet's bundled configs or bench/configs)")
    if not path.is_file():
        raise RecipeError(f"config {ref!r} not found ({path})")
    return path


def _configs_fingerprint() -> str:
    h = hashlib.sha256()
    try:
        h.update(importlib.metadata.version("mmdet").encode())
    except importlib.metadata.PackageNotFoundError:
        pass
    for p in sorted(BENCH_CONFIGS.rglob("*.py")):
        h.update(str(p.relative_to(BENCH_CONFIGS)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _load_base(ref: str) -> dict:
    """The base config as a dict. mmengine's parser takes ~0.4 s a file, so parsed configs are cached
    on disk (pickle keeps tuples), keyed by mmdet's version and the contents of bench/configs."""
    import pickle

    path = config_file(ref)
    key = hashlib.sha256(f"{ref}|{_configs_fingerprint()}".encode()).hexdigest()[:20]
    cached = cache_dir() / "configs" / f"{key}.pkl"
    if cached.exists():
        try:
            return pickle.loads(cached.read_bytes())
        except Exception:  # noqa: BLE001 - a bad cache entry is rebuilt
            pass
    from mmengine.config import Config

    data = Config.fromfile(str(path)).to_dict()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(data))
    os.replace(tmp, cached)
    return data


def row_config(spec: ModelSpec) -> "Config":  # noqa: F821
    """The row's model config with its overrides merged (mmengine semantics, ``_delete_`` honoured), as an
    mmengine Config: :func:`resolved_dict` (the one merge), copied, for callers that build from it."""
    from mmengine.config import Config

    return Config(copy.deepcopy(resolved_dict(spec)))


_RESOLVED: dict[str, dict] = {}
_DELETE_KEY = "_delete_"
_RESERVED_KEYS = ("filename", "text", "pretty_text", "env_variables")   # mmengine's Config refuses these


def _plain(node: Any) -> Any:
    """What mmengine's ``Config(...).to_dict()`` makes of a plain structure: every dict a new dict, every
    list or tuple a new one of its type, every other value itself."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_plain(v) for v in node)
    return node


def _merge_a_into_b(a: dict, b: Any) -> Any:
    """mmengine 0.10's ``Config._merge_a_into_b(a, b, allow_list_keys=True)`` on plain dicts, step for step
    (``_delete_`` popped only where ``b`` has the key; a digit key indexes a list), then made plain."""
    b = b.copy()
    for k, v in a.items():
        if k.isdigit() and isinstance(b, list):
            k = int(k)
            if len(b) <= k:
                raise KeyError(f"Index {k} exceeds the length of list {b}")
            b[k] = _merge_a_into_b(v, b[k])
        elif isinstance(v, dict):
            if k in b and not v.pop(_DELETE_KEY, False):
                if not isinstance(b[k], (dict, list)):
                    raise TypeError(f"{k}={v} in child config cannot inherit from base because {k} is a dict in the "
                                    f"child config but is of type {type(b[k])} in base config. You may set "
                                    f"`{_DELETE_KEY}=True` to ignore the base config.")
                b[k] = _merge_a_into_b(v, b[k])
            else:
                b[k] = _plain(v)
        else:
            b[k] = _plain(v)
    return b


def _resolve_plain(spec: ModelSpec) -> dict:
    """The row's base config with its overrides merged, as mmengine's ``Config(base).merge_from_dict(overrides,
    allow_list_keys=True).to_dict()`` gives it, without building mmengine Configs (~3 ms a row, and mmengine's
    import). A test holds it equal to mmengine's merge for every row of the catalogue and its corner cases."""
    if spec.module is not None:
        return {"module": _plain(dict(spec.module))}
    base = _load_base(spec.config)
    for key in base:
        if key in _RESERVED_KEYS:
            raise KeyError(f"{key} is reserved for config file")
    return merge_overrides(base, spec.overrides)


def merge_overrides(base: dict, overrides: dict) -> dict:
    """``Config(base).merge_from_dict(overrides, allow_list_keys=True)`` then ``.to_dict()``, on plain dicts
    (dotted keys, '0'-style list indices, ``_delete_``); neither argument is changed."""
    cfg = _plain(base)
    if overrides:
        options: dict = {}
        for full_key, v in copy.deepcopy(overrides).items():   # the merge pops `_delete_`: a copy
            d = options
            *path, last = full_key.split(".")
            for sub in path:
                d = d.setdefault(sub, {})
            d[last] = v
        cfg = _merge_a_into_b(options, cfg)
    return cfg


def resolved_dict(spec: ModelSpec) -> dict:
    """The row's resolved config as a plain dict (:func:`_resolve_plain`), built once per process for equal
    specs (as ``_load_base`` parses each base once): every caller gets the same dict, so read it and never
    change it (``copy.deepcopy`` first; :func:`row_config` does)."""
    # key order kept: it is the merged config's order (a dumped config follows it)
    key = json.dumps([spec.config, spec.overrides, spec.module], default=repr)
    got = _RESOLVED.get(key)
    if got is None:
        got = _RESOLVED[key] = _resolve_plain(spec)
    return got


def iter_types(node: Any) -> Iterator[str]:
    """Every string ``type`` named anywhere inside a config node."""
    if isinstance(node, dict):
        t = node.get("type")
        if isinstance(t, str):
            yield t
        for v in node.values():
            yield from iter_types(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from iter_types(v)


def _models_fingerprint() -> str:
    h = hashlib.sha256()
    try:
        h.update(importlib.metadata.version("mmdet").encode())
    except importlib.metadata.PackageNotFoundError:
        h.update(b"no-mmdet")
    for p in sorted((BENCH_DIR / "models").glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def register_all() -> None:
    """Import mmdet's modules and bench's components into the registries (the one place that does)."""
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    import bench.hooks  # noqa: F401  (progress hook)
    import bench.models  # noqa: F401  (registers the papers' components)


_TYPES_INDEX_VERSION = 3  # bump when what the index collects changes


@functools.lru_cache(maxsize=None)
def _types_index() -> dict[str, str | None]:
    """Every name registered in mmdet's (and mmengine's) registries, plus mmcv's ops, mapped to the
    bench source file that defines it (``bench/models/x.py``) or None for library types."""
    path = cache_dir() / f"types-v{_TYPES_INDEX_VERSION}-{_models_fingerprint()}.json"
    if path.exists():
        return json.loads(path.read_text())
    register_all()
    import inspect

    import mmdet.registry as reg
    from mmengine.registry import Registry

    import mmcv.ops

    # RoI layers and NMS are looked up by name in mmcv.ops, not through a registry
    index: dict[str, str | None] = {n: None for n in dir(mmcv.ops) if not n.startswith("_")}
    for obj in vars(reg).values():
        r = obj
        while isinstance(r, Registry):
            for name, cls in r.module_dict.items():
                src = None
                if getattr(cls, "__module__", "").startswith("bench."):
                    f = inspect.getsourcefile(cls)
                    src = Path(f).resolve().relative_to(BENCH_DIR.parent).as_posix() if f else None
                index[name] = index.get(name) or src
            r = r.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index, sort_keys=True))
    os.replace(tmp, path)
    return index


def known_types() -> frozenset[str]:
    """Names registered in mmdet's (and mmengine's) registries, plus bench's components."""
    return frozenset(_types_index())


def _file_state(rel: str) -> tuple[int, int]:
    st = (BENCH_DIR.parent / rel).stat()
    return st.st_mtime_ns, st.st_size


#: per process: (file, mtime, size) -> what it imports / its bytes (a report render or an audit asks for the
#: fingerprint of hundreds of configs, each re-parsing the same few model files: ~7 s of a cold render)
_IMPORTS_MEMO: dict[tuple[str, int, int], frozenset[str]] = {}
_BYTES_MEMO: dict[tuple[str, int, int], bytes] = {}


def _bench_imports(rel: str) -> set[str]:
    """bench/models files that ``rel`` imports (``from bench.models.x import ...``, ``from .x import ...``);
    memoised per process by the file's mtime and size."""
    key = (rel, *_file_state(rel))
    if key not in _IMPORTS_MEMO:
        _IMPORTS_MEMO[key] = frozenset(_parse_bench_imports(rel))
    return set(_IMPORTS_MEMO[key])


def _parse_bench_imports(rel: str) -> set[str]:
    import ast

    out: set[str] = set()
    tree = ast.parse((BENCH_DIR.parent / rel).read_text())
    for node in ast.walk(tree):
        mod = None
        if isinstance(node, ast.ImportFrom):
            mod = ("bench.models." + node.module if node.level == 1 and node.module else node.module)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("bench.models."):
                    out.add(a.name.replace(".", "/") + ".py")
        if mod and mod.startswith("bench.models."):
            f = mod.replace(".", "/") + ".py"
            if (BENCH_DIR.parent / f).exists():
                out.add(f)
    return out


def model_code_fingerprint(config: Any) -> str:
    """What a run's key takes from bench's own model code: the files that define the bench types its
    config names, with the bench modules they import. A config of library types only gets "none", so
    adding or editing one paper's modules never invalidates another paper's finished runs."""
    index = _types_index()
    files: set[str] = {f for f in (index.get(t) for t in iter_types(config)) if f and f.startswith("bench/models/")}
    todo = list(files)
    while todo:
        for f in _bench_imports(todo.pop()) - files:
            files.add(f)
            todo.append(f)
    if not files:
        return "none"
    h = hashlib.sha256()
    for rel in sorted(files):
        key = (rel, *_file_state(rel))
        if key not in _BYTES_MEMO:
            _BYTES_MEMO[key] = (BENCH_DIR.parent / rel).read_bytes()
        h.update(rel.encode())
        h.update(_BYTES_MEMO[key])
    return h.hexdigest()[:16]


_LIBRARY_SCOPES = ("mmdet", "mmengine", "mmcv")


def missing_types(spec: ModelSpec, cfg: Any = None) -> list[str]:
    """Types of the row's model that no registry knows (``cfg``: its resolved config, if already built)."""
    cfg = row_config(spec) if cfg is None else cfg
    node = cfg.get("module") if spec.module is not None else cfg.get("model")
    known = known_types()
    missing = []
    for t in iter_types(node):
        name = t.split(".", 1)[1] if "." in t and t.split(".", 1)[0] in _LIBRARY_SCOPES else t
        if name not in known and t not in missing:
            missing.append(t)
    return missing


#: config keys that make mmengine import modules by name
_IMPORTING_KEYS = ("custom_imports",)


def iter_typed(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(config path, type) of every string ``type`` anywhere inside a config node."""
    if isinstance(node, dict):
        t = node.get("type")
        if isinstance(t, str):
            yield (path + ".type" if path else "type"), t
        for k, v in node.items():
            yield from iter_typed(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from iter_typed(v, f"{path}[{i}]")


def refused_parts(cfg: dict) -> list[str]:
    """What in a resolved config bench refuses to build from recipe data, each with its field: a
    ``type`` that is an import path (``subprocess.run``, ``os.system``, ``mymodule.fn``: mmengine's
    registries import and call such names) or that no registry knows outside ``model`` (hooks,
    pipelines, evaluators, visualizer...), and ``custom_imports``. Unknown types inside ``model``
    are "model missing" (not implemented yet), not refused."""
    known = known_types()
    out: list[str] = []
    for key in _IMPORTING_KEYS:
        imports = (cfg.get(key) or {}).get("imports") if isinstance(cfg.get(key), dict) else cfg.get(key)
        for mod in ([imports] if isinstance(imports, str) else list(imports or [])):
            if not (isinstance(mod, str) and mod.split(".")[0] in ("bench",) + _LIBRARY_SCOPES):
                out.append(f"field {key}: imports {mod!r}: only bench's and the OpenMMLab libraries' modules "
                           "may be imported (a recipe is data)")
    for where, t in iter_typed(cfg):
        scope, dot, name = t.partition(".")
        if dot:
            if scope in _LIBRARY_SCOPES and name in known:
                continue
            out.append(f"field {where}: type {t!r} is an import path, not a registered component")
        elif t not in known and not where.startswith("model."):
            out.append(f"field {where}: type {t!r} is not a registered component")
    return out


def row_status(row: Row) -> tuple[RowStatus, str]:
    """(status, reason) of a recipe row: runnable, model missing (which types), refused (what), or
    reference only."""
    if row.reference_only is not None:
        return RowStatus.REFERENCE_ONLY, row.reference_only
    assert row.model is not None
    try:
        cfg = row_config(row.model)
    except RecipeError as e:
        return (RowStatus.REFUSED if "refused" in str(e) else RowStatus.MODEL_MISSING), str(e)
    refused = refused_parts(cfg.to_dict() if row.model.module is None else {"module": dict(row.model.module)})
    if refused:
        return RowStatus.REFUSED, "; ".join(refused)
    missing = missing_types(row.model, cfg)   # the config built above, not built again
    if missing:
        return RowStatus.MODEL_MISSING, "not implemented: " + ", ".join(missing)
    return RowStatus.RUNNABLE, ""


def canonical_hash(obj: Any, n: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def model_hash(row: Row) -> str | None:
    """Hash of the row's resolved model config and training setup: equal models share a hash."""
    if row.model is None:
        return None
    return canonical_hash({"config": resolved_dict(row.model), "train": row.train.model_dump()})


def table_statuses(table: Table) -> dict[str, tuple[RowStatus, str]]:
    return {r.id: row_status(r) for r in table.rows}
