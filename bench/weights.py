"""Pretrained weights a config loads, and where they are on this machine.

Compute nodes are usually offline, and mmengine's ``torchvision://`` scheme needs torchvision (not
installed with a CPU torch here); so at paper scale every checkpoint a config names is looked up by
file name in the weights folders (``--weights-dir``, then ``$BENCH_WEIGHTS``, a ``:``-separated list,
then torch's hub cache, where mmengine's own downloads land) and the config is rewritten to the local
file. A checkpoint found nowhere keeps its URL, and ``bench weights`` / ``bench preflight`` say where
to put it.

References understood: backbone or model ``init_cfg`` of type ``Pretrained`` or ``ConvertedPretrained``
(``checkpoint``),
old-style ``pretrained`` strings, and a config's ``load_from``; URL schemes ``torchvision://`` and
``modelzoo://``, ``open-mmlab://`` / ``openmmlab://``, ``mmcls://`` (resolved through the URL tables
mmengine ships in ``mmengine/hub/``), ``http(s)://`` and plain paths. Nothing here imports torch or
mmengine (only their files are read), so the CLI can list weights quickly.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional


class WeightsError(ValueError):
    pass


@dataclass
class WeightRef:
    ref: str                     # as the config names it
    where: str                   # config path of the field, e.g. model.backbone.init_cfg.checkpoint
    url: Optional[str]           # where it can be downloaded (None: a local path)
    file_name: str
    found: Optional[str] = None  # the local file used
    put_at: Optional[str] = None # where to put it when missing
    prefix: Optional[str] = None # init_cfg prefix (the part of the checkpoint that is loaded)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _mmengine_hub() -> Optional[Path]:
    spec = importlib.util.find_spec("mmengine")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "hub"


@functools.lru_cache(maxsize=None)
def _url_table(name: str) -> dict:
    hub = _mmengine_hub()
    if hub is None or not (hub / name).is_file():
        return {}
    return json.loads((hub / name).read_text())


def resolve_url(ref: str) -> tuple[Optional[str], str]:
    """(download URL or None for a local path, file name) of a checkpoint reference."""
    schemes = (("torchvision://", "torchvision_0.12.json"), ("modelzoo://", "torchvision_0.12.json"),
               ("open-mmlab://", "openmmlab.json"), ("openmmlab://", "openmmlab.json"), ("mmcls://", "mmcls.json"))
    for prefix, table in schemes:
        if ref.startswith(prefix):
            name = ref[len(prefix):]
            if table == "openmmlab.json":
                name = _url_table("deprecated.json").get(name, name)
            url = _url_table(table).get(name)
            if url is None:
                raise WeightsError(f"{ref}: no such model in mmengine's {table} (mmengine/hub/)")
            if not url.startswith(("http://", "https://")):   # relative to mmengine's home: a local file
                return None, Path(url).name
            return url, url.rsplit("/", 1)[-1].split("?")[0]
    if ref.startswith(("http://", "https://")):
        return ref, ref.rsplit("/", 1)[-1].split("?")[0]
    return None, Path(ref).name


def hub_checkpoints_dir() -> Path:
    """torch.hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), computed without importing torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(Path.home(), ".cache")), "torch")
    return Path(home) / "hub" / "checkpoints"


def search_dirs(weights_dirs: Optional[list[Path]] = None) -> list[Path]:
    dirs = [Path(d) for d in (weights_dirs or [])]
    dirs += [Path(p) for p in os.environ.get("BENCH_WEIGHTS", "").split(os.pathsep) if p]
    dirs.append(hub_checkpoints_dir())
    return list(dict.fromkeys(dirs))


#: the init_cfg types that load a checkpoint: mmengine's, and bench's with a key conversion (bench/models/pretrained.py)
PRETRAINED_INITS = ("Pretrained", "ConvertedPretrained")


def iter_refs(cfg: dict) -> Iterator[tuple[dict, str, str, Optional[str]]]:
    """(holding dict, key, config path, init_cfg prefix) of every checkpoint reference in a config."""
    def walk(node: Any, path: str):
        if isinstance(node, dict):
            if node.get("type") in PRETRAINED_INITS and isinstance(node.get("checkpoint"), str):
                yield node, "checkpoint", f"{path}.checkpoint", node.get("prefix")
            if isinstance(node.get("pretrained"), str):
                yield node, "pretrained", f"{path}.pretrained", None
            for k, v in node.items():
                yield from walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}[{i}]")

    yield from walk(cfg.get("model"), "model")
    if isinstance(cfg.get("load_from"), str):
        yield cfg, "load_from", "load_from", None


def find(file_name: str, dirs: list[Path]) -> Optional[Path]:
    for d in dirs:
        p = d / file_name
        if p.is_file():
            return p.resolve()
    return None


def localize(cfg: dict, weights_dirs: Optional[list[Path]] = None, rewrite: bool = True) -> list[WeightRef]:
    """Every checkpoint ``cfg`` loads, each found in the weights folders or not; with ``rewrite`` the
    found ones are replaced in ``cfg`` by their local path (so the job needs no network)."""
    dirs = search_dirs(weights_dirs)
    refs: list[WeightRef] = []
    for holder, key, where, prefix in list(iter_refs(cfg)):
        ref = holder[key]
        try:
            url, name = resolve_url(ref)
        except WeightsError as e:
            refs.append(WeightRef(ref, where, None, Path(ref).name, notes=[str(e)]))
            continue
        w = WeightRef(ref, where, url, name, prefix=prefix)
        if url is None and Path(ref).is_file():
            w.found = str(Path(ref).resolve())
        else:
            hit = find(name, dirs)
            w.found = str(hit) if hit else None
        if w.found is None:
            w.put_at = str(dirs[0] / name)
        elif rewrite:
            holder[key] = w.found
        refs.append(w)
    return refs


def released_ref(link, weights_dirs: Optional[list[Path]] = None) -> dict:
    """A row's released model-zoo checkpoint (a ``bench.zoo.ZooLink``) as ``bench weights`` lists it: the
    whole detector's weights, which ``bench eval --checkpoint zoo`` evaluates; found here or where to put it."""
    dirs = search_dirs(weights_dirs)
    hit = find(link.model.file_name, dirs)
    w = WeightRef(ref=link.model.weights, where=f"{link.model.metafile}: {link.model.name}", url=link.model.weights,
                  file_name=link.model.file_name, found=str(hit) if hit else None,
                  put_at=None if hit else str(dirs[0] / link.model.file_name),
                  notes=[link.describe()])
    return w.as_dict() | {"kind": "released checkpoint"}

