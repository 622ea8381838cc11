"""`bench run --log`: mmengine's visualizer backends, through the plan; TensorBoard for real."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess

import pytest

from bench.results import read_result, result_path
from tests.conftest import REPO, bench_env, bench_exe

LOG_SCALE = REPO / "tests" / "data" / "smoke-log.yaml"
TABLE, ROW = "pipeline-test/table-1", "tiny"


def _bench(results, data, *args):
    return subprocess.run([bench_exe(), *args], env=bench_env(results, data), capture_output=True, text=True,
                          timeout=600)


def test_tensorboard_event_file_of_a_real_smoke_run_holds_the_loss_curve(tmp_path):
    # tensorboard is in the dev extras the README's test command installs: its absence fails, never skips
    assert importlib.util.find_spec("tensorboard") is not None, "tensorboard is not installed: run ./install.sh --dev"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r, d = tmp_path / "r", tmp_path / "d"
    plain = _bench(r, d, "run", TABLE, ROW, "--scale", str(LOG_SCALE), "--dry-run")
    p = _bench(r, d, "run", TABLE, ROW, "--scale", str(LOG_SCALE), "--log", "tensorboard")
    assert p.returncode == 0, p.stdout + p.stderr
    res = read_result(result_path(r, "smoke", TABLE, ROW))
    assert res.run_key in plain.stdout            # logging is not part of the run key
    assert {"type": "TensorboardVisBackend"} in res.config["visualizer"]["vis_backends"]
    assert "tensorboard logs:" in p.stdout
    (vis,) = (r / "smoke" / "runs" / res.run_key / "train").glob("*/vis_data")
    assert list(vis.glob("events.out.tfevents.*"))
    ea = EventAccumulator(str(vis))
    ea.Reload()
    loss = [(e.step, e.value) for e in ea.Scalars("loss")]
    assert len(loss) >= 2 and [s for s, _ in loss] == sorted(s for s, _ in loss)
    assert all(math.isfinite(v) and v > 0 for _, v in loss)
    assert {"loss_cls", "loss_bbox", "loss_mask", "loss_rpn_cls"} <= set(ea.Tags()["scalars"])
    # the same numbers mmengine's LocalVisBackend wrote beside it
    local = [json.loads(line) for line in (vis / "scalars.json").read_text().splitlines()]
    assert [(x["step"], round(x["loss"], 4)) for x in local if "loss" in x] == [(s, round(v, 4)) for s, v in loss]


@pytest.mark.parametrize("backend", ["wandb", "mlflow"])
def test_wandb_and_mlflow_offline_or_refused_with_the_reason(tmp_path, backend):
    p = _bench(tmp_path / "r", tmp_path / "d", "run", TABLE, ROW, "--scale", str(LOG_SCALE), "--log", backend,
               "--dry-run")
    if importlib.util.find_spec(backend) is None:
        assert p.returncode == 1
        assert f"--log {backend}: refused: the {backend!r} package is not installed" in p.stderr
    else:   # installed: the plan takes it (offline backends write under the run's folder)
        assert p.returncode == 0, p.stdout + p.stderr
