"""Result files: one JSON per (scale, table, row), written atomically, read defensively.

Layout (fixed, so a later process can reattach):
    results/<scale>/<paper>/<table>/<row>.json       the row's result (done or failed)
    results/<scale>/runs/<run_key>/                   the run's work dir: config, logs, checkpoints,
                                                      state.json (live progress), job.json (executor ids)
A run (one training) may serve several rows of several tables; each row gets its own result file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

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
    trained_by: Optional[str] = Field(None, description="the finished run whose weights were evaluated, when this "
                                      "row differs from it only at test time (nothing trained)")
    phases_s: dict[str, float] = Field({}, description="wall seconds of the job's phases: setup (imports, data, "
                                       "Runner), train, test (COCO evaluation), measure (params, FLOPs, speed)")


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

    def metric(self, key: str) -> Optional[float]:
        assert key in METRIC_KEYS, key
        return self.measured.get(key)


def result_path(root: Path, scale: str, table: str, row: str) -> Path:
    return Path(root) / scale / table / f"{row}.json"


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


def read_result(path: Path) -> Result:
    """Read one result file; raise ResultReadError (never anything else) if it is unusable."""
    try:
        data = json.loads(Path(path).read_text())
        return Result.model_validate(data)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise ResultReadError(f"{path}: unreadable result file: {str(e).splitlines()[0]}") from None
