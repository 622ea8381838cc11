"""A training process killed mid-run restarts from its last checkpoint, not from zero."""
import json
import os
import signal
import subprocess
import time

from bench.results import read_result
from tests.conftest import REPO, bench_env, bench_exe

SCALE = REPO / "tests" / "data" / "smoke-resume.yaml"


def test_killed_training_resumes_from_checkpoint(tmp_path):
    env = bench_env(tmp_path / "results", tmp_path / "data")
    cmd = [bench_exe(), "run", "pipeline-test/table-1", "tiny", "--scale", str(SCALE)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = tmp_path / "results" / "smoke" / "runs"
    deadline = time.time() + 600
    state = {}
    while time.time() < deadline:
        states = list(runs.glob("*/state.json"))
        if states:
            try:
                state = json.loads(states[0].read_text())
            except ValueError:
                state = {}
            if state.get("state") == "running" and (state.get("iter") or 0) >= 10:
                break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    else:
        raise AssertionError(f"training never reached iteration 10: {state}")
    os.kill(int(state["pid"]), signal.SIGKILL)  # the training process itself, as the OOM killer would
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "1 failed" in out
    result = tmp_path / "results" / "smoke" / "pipeline-test" / "table-1" / "tiny.json"
    killed = read_result(result)
    assert killed.status == "failed" and "ended without a result" in killed.failure
    ckpts = sorted(p.name for p in runs.glob("*/train/iter_*.pth"))
    assert ckpts, "no checkpoint was written before the kill"

    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    res = read_result(result)
    assert res.status == "done" and res.measurement.iterations == 24
    assert res.measurement.resumed_from and "iter_" in res.measurement.resumed_from
    resumed_iter = int(res.measurement.resumed_from.rsplit("iter_", 1)[1].split(".")[0])
    assert resumed_iter >= 8
    logs = sorted((tmp_path / "results" / "smoke" / "runs").glob("*/train/*/*.log"))
    second = logs[-1].read_text()
    assert f"resumed from" in second.lower() or "resume" in second.lower()
    assert "Iter(train) [ 4/24]" not in second  # did not start from zero


def test_preemption_signal_inside_a_bare_except_is_still_a_requeue():
    """submitit's requeue handler raises SystemExit wherever the job is when SIGUSR2 lands. If that is
    inside mmengine's Config.pretty_text (called on every checkpoint save), its bare ``except:`` turns
    the exit into "SyntaxError: Failed to format the config file" - which CI once recorded as the
    run's failure. The job must still see the requeue. The signal here is real and lands inside
    yapf's FormatCode, as it did in CI."""
    import sys

    from mmengine.config import Config

    from bench.job import requeue_exit

    def handler(signum, frame):
        sys.exit(-1)  # what submitit's checkpoint_and_try_requeue ends with, after requeueing

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "FormatCode":
            sys.setprofile(None)
            signal.raise_signal(signal.SIGUSR2)
        return None

    old = signal.signal(signal.SIGUSR2, handler)
    cfg = Config(dict(model=dict(type="MaskRCNN", backbone=dict(depth=50)), train_cfg=dict(max_iters=24)))
    try:
        sys.setprofile(tracer)
        try:
            cfg.pretty_text
        except BaseException as e:  # noqa: BLE001
            err = e
        else:
            raise AssertionError("the signal did not interrupt pretty_text")
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGUSR2, old)
    assert isinstance(err, SyntaxError)  # mmengine's wrapping, as in the CI failure
    assert isinstance(requeue_exit(err), SystemExit)
    assert requeue_exit(RuntimeError("a real failure")) is None
