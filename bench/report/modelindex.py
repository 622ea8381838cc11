"""`bench report --format model-index`: the measured rows in OpenMMLab's model-index format.

The layout is the one mmdet's own wheel ships (``mmdet/.mim/model-index.yml`` importing
``configs/<dir>/metafile.yml``; the schema of the ``model-index`` package that ``mim`` reads):

    <out>/<scale>/model-index/model-index.yml            Import: [<paper>/metafile.yml, ...]
    <out>/<scale>/model-index/<paper>/metafile.yml        Collections (one per paper) and Models (one per row)
    <out>/<scale>/model-index/<paper>/configs/<table>/<row>.json   the resolved config the run used

Each Model holds measured values only, from the row's trained result: ``Metadata`` (Training Resources,
Epochs or Iterations, Batch Size, Parameters, FLOPs, inference time with hardware, backend, batch size,
mode and resolution, training memory where measured), ``Results`` (Task, Dataset, Metrics: box AP / mask
AP and their COCO breakdown) and ``Weights`` (the run's last checkpoint, when it is still there), plus a
``Provenance`` block (scale, run key, commit, config hash, dataset, finished). Published numbers are
never written. A smoke-scale export is refused unless asked for (its numbers are not comparable to any
paper), and then says so in every model.

:func:`read_model_index` is the reader the tests put both this export and mmdet's shipped index through.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from bench.recipes import Table

TASKS = (("mask", "Instance Segmentation"), ("box", "Object Detection"))
SUFFIX_NAMES = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "APs", "APm": "APm", "APl": "APl"}
DATASET_NAMES = {"coco": "COCO", "cityscapes": "Cityscapes"}


class ModelIndexError(ValueError):
    pass


def _dataset_name(ds: str) -> str:
    return DATASET_NAMES.get(ds, ds if not ds.startswith("synth") else "bench synthetic shapes " + ds[len("synth"):].strip())


def _last_checkpoint(work_dir: Optional[str]) -> Optional[str]:
    if not work_dir:
        return None
    pointer = Path(work_dir) / "train" / "last_checkpoint"
    try:
        path = Path(pointer.read_text().strip())
    except OSError:
        return None
    return str(path) if path.is_file() else None


def _results_of(res) -> list[dict]:
    dataset = _dataset_name(res.measurement.dataset if res.measurement else "")
    out = []
    for prefix, task in TASKS:
        metrics = {f"{prefix} {SUFFIX_NAMES[k.split('_', 1)[1]]}": v for k, v in res.measured.items()
                   if k.startswith(prefix + "_") and k.split("_", 1)[1] in SUFFIX_NAMES and v is not None}
        if metrics:
            out.append({"Task": task, "Dataset": dataset, "Metrics": metrics})
    return out


def model_entry(table: Table, row, res, collection: str, config_rel: str) -> dict:
    """One row's Model: measured values and their provenance only."""
    m, meas = res.measurement, res.measured
    meta: dict[str, Any] = {}
    hardware = m.device
    meta["Training Resources"] = f"{m.gpus}x {hardware}" if m.gpus else hardware
    meta["Training Data"] = _dataset_name(m.dataset)
    if m.epochs is not None:
        meta["Epochs"] = m.epochs
    if m.iterations is not None:
        meta["Iterations"] = m.iterations
    meta["Batch Size"] = m.batch_size
    if meas.get("params_M") is not None:
        meta["Parameters"] = int(round(meas["params_M"] * 1e6))
    if meas.get("gflops") is not None:
        meta["FLOPs"] = int(round(meas["gflops"] * 1e9))
    if meas.get("latency_ms") is not None:
        size = m.input_size
        meta["inference time (ms/im)"] = [{
            "value": meas["latency_ms"], "hardware": hardware, "backend": "PyTorch", "batch size": 1, "mode": "FP32",
            "resolution": f"({size[0]}, {size[1]})" if size else "the config's test resize",
            "protocol": m.speed_protocol or ""}]
    if meas.get("train_mem_GB") is not None:
        meta["Training Memory (GB)"] = meas["train_mem_GB"]
    meta["Provenance"] = {
        "scale": m.scale, "run key": res.run_key, "commit": res.git_commit, "config hash": res.config_hash,
        "dataset": m.dataset, "eval split": m.eval_split, "seed": m.seed, "finished": res.finished_at,
        "source": f"bench run ({table.name} row {row.id})"}
    if m.scale == "smoke":
        meta["Provenance"]["note"] = "SMOKE SCALE: not comparable to the paper (synthetic data, a few iterations)"
    entry: dict[str, Any] = {"Name": f"{table.paper.slug}_{table.table}_{row.id}", "In Collection": collection,
                             "Config": config_rel, "Metadata": meta, "Results": _results_of(res)}
    weights = _last_checkpoint(res.work_dir)
    if weights:
        entry["Weights"] = weights
    return entry


def write_model_index(tables: Sequence[Table], scale: str, results_root: Path, out: Path,
                      smoke: bool = False) -> list[Path]:
    """Write the model index of ``tables``' done rows at ``scale``; returns the files written."""
    from bench.collect import table_states
    from bench.results import atomic_write_json

    if scale == "smoke" and not smoke:
        raise ModelIndexError("a smoke-scale model index holds numbers not comparable to any paper's (synthetic data, "
                              "a few iterations): refused; pass --smoke to write it anyway (every model then says so)")
    root = Path(out) / scale / "model-index"
    by_paper: dict[str, dict] = {}
    written: list[Path] = []
    for t in tables:
        states, _ = table_states(t, scale, results_root)
        paper = by_paper.setdefault(t.paper.slug, {"collection": _collection(t), "models": []})
        for st in states:
            res = st.result
            if res is None or res.status != "done" or res.measurement is None:
                continue
            row = t.row(st.row)
            rel = f"configs/{t.table}/{row.id}.json"
            cfg_path = root / t.paper.slug / rel
            atomic_write_json(cfg_path, res.config, durable=False)
            written.append(cfg_path)
            paper["models"].append(model_entry(t, row, res, paper["collection"]["Name"], rel))
    imports = []
    for slug, paper in by_paper.items():
        if not paper["models"]:
            continue
        path = root / slug / "metafile.yml"
        _write_yaml(path, {"Collections": [paper["collection"]], "Models": paper["models"]})
        written.append(path)
        imports.append(f"{slug}/metafile.yml")
    if not imports:
        raise ModelIndexError(f"no done result at {scale} scale in {results_root} for "
                              + ", ".join(t.name for t in tables) + ": nothing to export")
    index = root / "model-index.yml"
    _write_yaml(index, {"Import": imports})
    return [index] + written


def _collection(t: Table) -> dict:
    p = t.paper
    c: dict[str, Any] = {"Name": p.title, "Metadata": {"Training Resources": str(p.hardware)}}
    paper: dict[str, Any] = {"Title": p.title}
    url = getattr(p, "url", None)
    if url:
        paper["URL"] = url
    c["Paper"] = paper
    c["Code"] = {"URL": "bench (this repository): bench/models/", "Version": f"mmdet {_mmdet_version()}"}
    return c


def _mmdet_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("mmdet")
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _write_yaml(path: Path, data: dict) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False, allow_unicode=True, width=120)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ reader
def read_model_index(path: Path) -> list[dict]:
    """Every Model of a model index (``model-index.yml`` following its ``Import`` list, or one metafile), each
    with its collection's entry under ``"_collection"`` and its metafile under ``"_metafile"``. Safe YAML only;
    a metafile may be a mapping with Models (and Collections) or a bare list of models."""
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    if isinstance(data, dict) and "Import" in data:
        out = []
        for rel in data["Import"] or []:
            out += read_model_index(path.parent / rel)
        return out
    collections = {c.get("Name"): c for c in (data.get("Collections") or [])} if isinstance(data, dict) else {}
    models = data.get("Models") if isinstance(data, dict) else data
    if not isinstance(models, list):
        raise ModelIndexError(f"{path}: neither an Import list nor Models")
    return [m | {"_collection": collections.get(m.get("In Collection")), "_metafile": str(path)}
            for m in models if isinstance(m, dict)]
