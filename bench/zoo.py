"""mmdetection's model zoo as its wheel ships it: the metafiles (``mmdet/.mim/configs/*/metafile.yml``).

Each metafile lists models with their ``Config`` (``configs/<dir>/<name>.py``), published ``Results``
(box AP, mask AP per task and dataset), ``Metadata`` (epochs, training memory, inference time) and the
released checkpoint's URL (``Weights``). A row whose config is an mmdet zoo config (``mmdet::<dir>/<name>.py``)
is linked to the metafile entry whose Config names the same file: ``bench show`` / ``bench weights`` name
its released checkpoint, ``bench eval --checkpoint zoo`` evaluates that file (found by file name in the
weights folders, never downloaded), and :func:`metafile_crosscheck` sets the recipe's published cells
beside the metafile's.

The metafiles are read with ``yaml.safe_load`` semantics (the C safe loader when present) and cached:
in the process, and on disk under ``$BENCH_CACHE`` keyed by mmdet's version and the files' sizes and
mtimes. Nothing here imports torch or mmengine.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from bench.recipes import Row, Table

#: metafile metric name -> bench metric key
METRICS = {"box AP": "box_AP", "mask AP": "mask_AP"}
#: recipe dataset -> metafile Dataset
DATASETS = {"coco": "COCO", "cityscapes": "Cityscapes"}


class ZooError(ValueError):
    pass


@dataclass
class ZooModel:
    name: str
    collection: Optional[str]
    config: str                          # as the metafile says: configs/<dir>/<name>.py
    weights: Optional[str]               # the released checkpoint's URL
    metafile: str                        # configs/<dir>/metafile.yml
    results: list[dict] = field(default_factory=list)    # [{task, dataset, metrics: {box AP: ..}}]
    metadata: dict = field(default_factory=dict)

    @property
    def file_name(self) -> Optional[str]:
        return self.weights.rsplit("/", 1)[-1].split("?")[0] if self.weights else None

    def metric(self, key: str, dataset: Optional[str] = None) -> Optional[float]:
        """The metafile's value of a bench metric key (box_AP, mask_AP), on ``dataset`` if given."""
        for r in self.results:
            if dataset and str(r.get("dataset", "")).lower() != dataset.lower():
                continue
            for name, value in (r.get("metrics") or {}).items():
                if METRICS.get(name) == key and isinstance(value, (int, float)) and not isinstance(value, bool):
                    return float(value)
        return None

    def as_dict(self) -> dict:
        return asdict(self) | {"file_name": self.file_name}


def _configs_dir() -> Path:
    from bench.resolve import mmdet_configs_dir

    return mmdet_configs_dir()


def _loader():
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse(path: Path, root: Path) -> list[dict]:
    import yaml

    data = yaml.load(path.read_text(), Loader=_loader())  # noqa: S506 - a safe loader (CSafeLoader / SafeLoader)
    models = data.get("Models") if isinstance(data, dict) else data   # a few metafiles are bare lists
    out = []
    for m in models if isinstance(models, list) else []:
        if not isinstance(m, dict) or not isinstance(m.get("Config"), str):
            continue
        results = []
        for r in m.get("Results") or []:
            if isinstance(r, dict):
                results.append({"task": r.get("Task"), "dataset": r.get("Dataset"),
                                "metrics": {k: v for k, v in (r.get("Metrics") or {}).items()
                                            if isinstance(v, (int, float, str))}})
        weights = m.get("Weights") if isinstance(m.get("Weights"), str) else None
        meta = m.get("Metadata") if isinstance(m.get("Metadata"), dict) else {}
        out.append({"name": str(m.get("Name")), "collection": m.get("In Collection"), "config": m["Config"],
                    "weights": weights, "metafile": f"configs/{path.relative_to(root).as_posix()}",
                    "results": results, "metadata": json.loads(json.dumps(meta, default=str))})
    return out


def _fingerprint(files: list[Path]) -> str:
    import importlib.metadata

    h = hashlib.sha256()
    try:
        h.update(importlib.metadata.version("mmdet").encode())
    except importlib.metadata.PackageNotFoundError:
        pass
    for p in files:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def models() -> dict[str, ZooModel]:
    """Every zoo model of the installed mmdet, by config path relative to mmdet's configs folder
    (``mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py``)."""
    from bench.resolve import cache_dir

    root = _configs_dir()
    files = sorted(root.glob("*/metafile.yml"))
    cache = cache_dir() / f"zoo-{_fingerprint(files)}.json"
    entries = None
    if cache.exists():
        try:
            entries = json.loads(cache.read_text())
        except ValueError:
            entries = None
    if entries is None:
        entries = [e for f in files for e in _parse(f, root)]
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, cache)
    out: dict[str, ZooModel] = {}
    for e in entries:
        rel = e["config"][len("configs/"):] if e["config"].startswith("configs/") else e["config"]
        out.setdefault(rel, ZooModel(**e))
    return out


@dataclass
class ZooLink:
    """A row's link to the zoo: the entry of its base config, and whether the row's model is that config's
    (no override of ``model``: the released checkpoint is the row's own model)."""

    model: ZooModel
    exact: bool
    overridden: list[str]           # model.* keys the row overrides
    schedule: Optional[str] = None  # how the row's training differs from the zoo model's (epochs), if it does

    def describe(self) -> str:
        m = self.model
        text = f"released checkpoint {m.file_name} ({m.weights})"
        if self.overridden:
            text += (" of the base config; the row overrides " + ", ".join(self.overridden[:4])
                     + (" ..." if len(self.overridden) > 4 else "") + ": the checkpoint may not fit its model")
        if self.schedule:
            text += f"; {self.schedule}: not the row's training"
        return text

    def as_dict(self) -> dict:
        return {"name": self.model.name, "config": self.model.config, "metafile": self.model.metafile,
                "url": self.model.weights, "file_name": self.model.file_name, "exact": self.exact,
                "overridden": self.overridden, "schedule": self.schedule}


def _model_overrides(node: Any, path: str = "model") -> list[str]:
    if not isinstance(node, dict):
        return [path]
    return [p for k, v in node.items() for p in (_model_overrides(v, f"{path}.{k}") if isinstance(v, dict)
                                                  else [f"{path}.{k}"])]


def link(row: Row) -> Optional[ZooLink]:
    """The zoo entry of the row's config, if it is an mmdet zoo config with a released checkpoint."""
    spec = row.model
    if spec is None or not isinstance(spec.config, str) or not spec.config.startswith("mmdet::"):
        return None
    m = models().get(spec.config[len("mmdet::"):])
    if m is None or not m.weights:
        return None
    over = (spec.overrides or {}).get("model")
    overridden = _model_overrides(over) if over is not None else []
    zoo_epochs, row_epochs = m.metadata.get("Epochs"), row.train.epochs
    schedule = (f"the zoo model trained {zoo_epochs} epochs, the row {row_epochs}"
                if isinstance(zoo_epochs, int) and row_epochs is not None and row_epochs != zoo_epochs else None)
    return ZooLink(m, exact=not overridden and schedule is None, overridden=overridden, schedule=schedule)


def sha256_prefix(file_name: str) -> Optional[str]:
    """The SHA-256 prefix an OpenMMLab release names its file by (``..._20200205-d4b0c5d6.pth``: the first 8 hex
    digits of the file's SHA-256, as mmdet's tools/model_converters/publish_model.py names it), if it has one."""
    m = re.search(r"-([0-9a-f]{8})\.pth$", file_name)
    return m.group(1) if m else None


def local_checkpoint(row: Row, weights_dirs: Optional[list[Path]] = None) -> tuple[Path, str, dict]:
    """(local file, note, the zoo entry) of the row's released zoo checkpoint, found by file name in
    ``weights_dirs``, then ``$BENCH_WEIGHTS``, then torch's hub cache; never downloaded. Whether the file is the
    released one (its SHA-256 begins as its name says) is for the caller to check once it hashes the file
    (``bench.evaluate`` does)."""
    from bench.weights import find, search_dirs

    lk = link(row)
    if lk is None:
        raise ZooError(f"row {row.id!r}: --checkpoint zoo needs a row whose config is an mmdet model-zoo config with a "
                       f"released checkpoint ({row.model.config if row.model else 'no model'} is not one)")
    dirs = search_dirs(weights_dirs)
    hit = find(lk.model.file_name, dirs)
    if hit is None:
        raise ZooError(f"row {row.id!r}: the released checkpoint {lk.model.file_name} is not here (looked in "
                       + ", ".join(str(d) for d in dirs) + f"); fetch {lk.model.weights} on a machine with internet "
                       f"and put it at {dirs[0] / lk.model.file_name} (bench never downloads)")
    info = lk.as_dict() | {"sha256_prefix": sha256_prefix(lk.model.file_name)}
    return hit, f"mmdet model zoo: {lk.model.name} ({lk.model.metafile}), {lk.model.weights}", info


def metafile_crosscheck(table: Table) -> list[dict]:
    """For each row of ``table`` whose model is an mmdet zoo model as shipped (its config, no override of
    ``model``), per metric (box AP, mask AP) the recipe has a published value for: the published value, the
    metafile's (on the row's dataset; None if the metafile has none), the config, and whether they agree
    (equal as printed: within half of the last printed digit, 0.05 for one decimal). Rows whose model the
    recipe changes (ablation variants on a zoo base config) are not the zoo's model and are left out."""
    out = []
    for row in table.rows:
        try:
            lk = link(row)
        except Exception:  # noqa: BLE001 - a row without a readable config has no zoo link
            lk = None
        if lk is None or not lk.exact:
            continue
        dataset = DATASETS.get(row.train.dataset, row.train.dataset)
        for key in ("box_AP", "mask_AP"):
            published = row.published.get(key)
            if published is None:
                continue
            meta = lk.model.metric(key, dataset)
            agree = None if meta is None else abs(published - meta) <= _half_digit(published) + 1e-9
            out.append({"table": table.name, "row": row.id, "metric": key, "published": published, "metafile": meta,
                        "config": lk.model.config, "agree": agree, "zoo_model": lk.model.name})
    return out


def _half_digit(value: float) -> float:
    text = repr(float(value))
    decimals = 0 if text.endswith(".0") else len(text.split(".")[1])
    return 0.5 * 10 ** (-max(decimals, 1))


def table_weights(tables, weights_dirs: Optional[list[Path]] = None, on_error=None) -> list[dict]:
    """Every checkpoint file the runnable rows of ``tables`` (``bench.recipes.Table``s) load at paper scale,
    and each zoo row's released checkpoint, once per file name, with the rows that use it (what
    ``bench weights`` lists). ``on_error(table, row, message)`` hears of a row whose config does not resolve."""
    from bench.resolve import row_config, row_status
    from bench.vocab import RowStatus
    from bench.weights import localize, released_ref

    entries: dict[str, dict] = {}
    for t in tables:
        for r in t.rows:
            try:
                if row_status(r)[0] is not RowStatus.RUNNABLE or r.model.config is None:
                    continue
                cfg = row_config(r.model).to_dict()
            except Exception as e:  # noqa: BLE001 - a row that does not resolve is named, not fatal
                if on_error:
                    on_error(t.name, r.id, str(e).splitlines()[-1] if str(e) else type(e).__name__)
                continue
            for w in localize(cfg, weights_dirs, rewrite=False):
                e = entries.setdefault(w.file_name, w.as_dict() | {"rows": [], "kind": "pretrained"})
                e["rows"].append(f"{t.name}/{r.id}")
            try:
                lk = link(r)
            except Exception:  # noqa: BLE001 - the zoo link is extra information: never fail a listing for it
                lk = None
            if lk is not None:   # what `bench eval --checkpoint zoo` evaluates
                e = entries.setdefault(lk.model.file_name, released_ref(lk, weights_dirs) | {"rows": []})
                e["rows"].append(f"{t.name}/{r.id}")
    return list(entries.values())
