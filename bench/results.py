"""Result files: one JSON per (scale, table, row), written atomically, read defensively.

Layout (fixed, so a later process can reattach):
    results/<scale>/<paper>/<table>/<row>.json       the row's result (done or failed)
    results/<scale>/runs/<run_key>/                   the run's work dir: config, logs, checkpoints,
                                                      state.json (live progress), job.json (executor ids)
    results/<scale>/checkpoint-evals/<paper>/<table>/<row>.json   `bench eval` of a given checkpoint
                                                      (source: checkpoint), never a trained result
A run (one training) may serve several rows of several tables; each row gets its own result file.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from bench.vocab import METRIC_KEYS

SCHEMA_VERSION = 1


def default_results_dir() -> Path:
    env = os.environ.get("BENCH_RESULTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "results"


class Measurement(BaseModel):
    """How the measured numbers were obtained; every result carries it."""

    model_config = ConfigDict(extra="forbid")
    scale: Literal["smoke", "paper"]
    dataset: str = Field(description="'synth' (with its key), 'coco', 'cityscapes'")
    dataset_root: Optional[str] = None
    eval_split: str
    train_images: Optional[int] = None
    eval_images: Optional[int] = None
    iterations: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: int
    gpus: int
    lr: Optional[float] = None
    lr_scaled_from: Optional[float] = Field(None, description="the paper's lr before batch scaling, if scaled")
    input_size: Optional[list[int]] = None
    pretrained: bool
    seed: int
    device: str = Field(description="e.g. 'cpu: AMD EPYC (2 threads)' or 'cuda: NVIDIA H100'")
    evaluator: str = "pycocotools COCOeval (mmdet CocoMetric)"
    speed_protocol: Optional[str] = None
    flops_note: Optional[str] = None
    resumed_from: Optional[str] = Field(None, description="checkpoint the training resumed from, if it was interrupted")
    resume_refused: list[str] = Field([], description="checkpoints not resumed from, with why (no or wrong checksum)")
    trained_by: Optional[str] = Field(None, description="the finished run whose weights were evaluated, when this "
                                      "row differs from it only at test time (nothing trained)")
    phases_s: dict[str, float] = Field({}, description="wall seconds of the job's phases: setup (imports, data, "
                                       "Runner), train, test (COCO evaluation), measure (params, FLOPs, speed)")
    distributed: Optional[dict] = Field(None, description="how the training was split: world_size (processes), "
                                        "backend (nccl/gloo), per_task_batch, total_batch, lr vs the paper's, "
                                        "cpu_changes (what a CPU run changed in the GPU config, e.g. SyncBN -> BN), "
                                        "eval_gathered (evaluation results gathered from all ranks)")
    eval_limit: Optional[int] = Field(None, description="`bench eval --limit N`: only the first N evaluation images "
                                      "were evaluated (never comparable to the paper)")


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    status: Literal["done", "failed", "cancelled"]
    table: str
    row: str
    label: str
    run_key: str
    config_hash: str
    measured: dict[str, Optional[float]] = {}
    measured_notes: dict[str, str] = {}
    published: dict[str, Optional[float]] = {}
    measurement: Optional[Measurement] = None
    failure: Optional[str] = Field(None, description="why the run failed (exception, NaN loss, OOM, killed)")
    log_tail: list[str] = []
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    wall_s: Optional[float] = None
    work_dir: Optional[str] = None
    config: dict[str, Any] = Field({}, description="the resolved mmdet config the run used")
    overlay: dict[str, Any] = Field({}, description="the scale overlay applied to the recipe's config")
    versions: dict[str, str] = {}
    git_commit: Optional[str] = None
    hostname: Optional[str] = None
    shared_with: list[str] = Field([], description="other table/rows served by the same run")
    executor: Optional[dict[str, Any]] = None
    matches: Optional[dict[str, Any]] = Field(None, description="the per-image COCOeval matches file beside this "
                                              "result (<row>.matches.npz): file, sha256, iou_types, images")
    source: Literal["trained", "checkpoint"] = Field("trained", description="trained: `bench run` trained the model; "
                                                     "checkpoint: `bench eval` evaluated a given checkpoint file")
    checkpoint: Optional[dict[str, Any]] = Field(None, description="source checkpoint: {path, sha256, size, ...} of "
                                                 "the file evaluated, and what a partial load skipped")

    @field_validator("measured", "published")
    @classmethod
    def _finite(cls, v: dict) -> dict:
        for key, value in v.items():
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{key}: {value} is not a finite number")
        return v

    #: the file this result was read from (not serialised): finds the matches file beside it
    _path: Optional[Path] = PrivateAttr(None)

    @property
    def path(self) -> Optional[Path]:
        return self._path

    def metric(self, key: str) -> Optional[float]:
        assert key in METRIC_KEYS, key
        return self.measured.get(key)


def result_path(root: Path, scale: str, table: str, row: str) -> Path:
    return Path(root) / scale / table / f"{row}.json"


def checkpoint_result_path(root: Path, scale: str, table: str, row: str) -> Path:
    """Where `bench eval` writes a checkpoint's evaluation of a row: a folder of its own, so it never
    overwrites (or is read as) the row's trained result."""
    return Path(root) / scale / CHECKPOINT_EVALS / table / f"{row}.json"


#: results/<scale>/checkpoint-evals/<paper>/<table>/<row>.json (see checkpoint_result_path)
CHECKPOINT_EVALS = "checkpoint-evals"


def run_dir(root: Path, scale: str, run_key: str) -> Path:
    return Path(root) / scale / "runs" / run_key


def atomic_write_json(path: Path, data: Any, durable: bool = True) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a part. ``durable``
    also flushes it to disk before the rename (results); progress files skip that (no fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_result(path: Path, result: Result) -> None:
    atomic_write_json(path, result.model_dump(mode="json"))


class ResultReadError(ValueError):
    pass


#: a result file is a few hundred KiB at most (config + log tail); anything far larger is not one
MAX_JSON_BYTES = 16 << 20


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def load_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Strict JSON from a file someone else may have written: no NaN/Infinity, bounded size and
    nesting. Raises FileNotFoundError, or ValueError (with the reason) for anything unusable."""
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ValueError(f"larger than {max_bytes >> 20} MiB")
    try:
        return json.loads(raw.decode("utf-8", "replace"), parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_json_dict(path: Path) -> dict:
    """A small JSON record (state.json, a pending job record): the mapping, or {} if it is missing,
    unreadable or not a mapping. Never raises."""
    try:
        data = load_json(path, max_bytes=1 << 20)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_result(path: Path) -> Result:
    """Read one result file; raise ResultReadError (never anything else) if it is unusable."""
    try:
        data = load_json(Path(path))
        if not isinstance(data, dict):
            raise ValueError(f"a result file holds a JSON object, not {type(data).__name__}")
        res = Result.model_validate(data)
        res._path = Path(path)
        return res
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        lines = str(e).splitlines()
        reason = " ".join(ln.strip() for ln in lines[:3]) if lines else type(e).__name__
        raise ResultReadError(f"{path}: unreadable result file: {reason}") from None
