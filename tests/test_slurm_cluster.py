"""End-to-end checks of submitit against a real single-node SLURM cluster (see tests/slurm_cluster.py).

Run with:  python -m pytest -m slurm tests/test_slurm_cluster.py
Needs root and the packages from `scripts/slurm-cluster install`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:  # so that "tests.slurm_cluster" imports however pytest was started
    sys.path.insert(0, _REPO_ROOT)

import cloudpickle  # noqa: E402  (a submitit dependency)
import submitit  # noqa: E402
from submitit.core.utils import FailedJobError  # noqa: E402

# The job processes cannot import this test module (it is not on their sys.path), so the functions
# and classes submitted from here travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]

JOB_DEADLINE_S = 90


def make_executor(folder: Path, **params) -> submitit.AutoExecutor:
    # the job processes run this interpreter, which has submitit (and cloudpickle) importable
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_python=sys.executable)
    executor.update_parameters(
        timeout_min=10, slurm_partition="debug", cpus_per_task=1, nodes=1, tasks_per_node=1, **params
    )
    return executor


def wait_result(job: submitit.Job, timeout: float = JOB_DEADLINE_S):
    """job.result() with a deadline (result() itself waits forever)."""
    deadline = time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > deadline:
            pytest.fail(f"job {job.job_id} not done after {timeout:.0f}s (state {job.state})")
        time.sleep(0.25)
    return job.result()


# ---- functions run inside the jobs (pickled by value) ---------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


def square_slowly(x: int) -> int:
    import time as _time

    _time.sleep(1)
    return x * x


def fail_with(message: str) -> None:
    raise ValueError(message)


class CountTo(submitit.helpers.Checkpointable):
    """Counts to n_steps, one step at a time; every run appends `start <step>` and every step
    `step <k>` to a log file. On preemption submitit pickles this object (with its progress) via
    checkpoint() and requeues the job; the requeued run goes on from the saved step."""

    def __init__(self) -> None:
        self.step = 0

    def __call__(self, log_path: str, n_steps: int, step_s: float) -> int:
        import time as _time

        with open(log_path, "a") as f:
            f.write(f"start {self.step}\n")
        while self.step < n_steps:
            _time.sleep(step_s)
            self.step += 1
            with open(log_path, "a") as f:
                f.write(f"step {self.step}\n")
        with open(log_path, "a") as f:
            f.write("done\n")
        return self.step


# ---- tests ------------------------------------------------------------------------------------------


def test_cluster_is_up(slurm_cluster):
    assert slurm_cluster.conf_path.is_file()
    assert slurm_cluster.env["SLURM_CONF"] == str(slurm_cluster.conf_path)
    assert {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"} <= set(slurm_cluster.pids)
    res = slurm_cluster.run("sinfo", "-h", "-o", "%P %a")
    assert res.stdout.split() == ["debug*", "up"]


def test_submit_returns_result_and_sacct_completed(slurm_cluster, tmp_path):
    job = make_executor(tmp_path).submit(add, 2, 3)
    assert wait_result(job) == 5
    slurm_cluster.wait_sacct_state(job.job_id, lambda s: s == "COMPLETED", timeout=60)


def test_map_array_is_one_job_array(slurm_cluster, tmp_path):
    executor = make_executor(tmp_path, slurm_array_parallelism=2)
    jobs = executor.map_array(square_slowly, [1, 2, 3])
    ids = [job.job_id for job in jobs]
    masters = {job_id.split("_")[0] for job_id in ids}
    assert len(masters) == 1, f"expected one job array, got ids {ids}"
    assert sorted(job_id.split("_")[1] for job_id in ids) == ["0", "1", "2"]
    assert [wait_result(job) for job in jobs] == [1, 4, 9]
    # the array was submitted with the concurrency cap
    script = jobs[0].paths.submission_file.read_text()
    assert "#SBATCH --array=0-2%2" in script
    (master,) = masters
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = slurm_cluster.sacct_states(master)
        if len(states) == 3 and all(s == "COMPLETED" for s in states):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"array {master}: sacct states {states}\n{slurm_cluster.diagnostics()}")


def test_cancelled_job(slurm_cluster, tmp_path):
    job = make_executor(tmp_path).submit(time.sleep, 300)
    slurm_cluster.wait_sacct_state(job.job_id, lambda s: s == "RUNNING", timeout=60)
    job.cancel()
    state = slurm_cluster.wait_sacct_state(job.job_id, lambda s: s.startswith("CANCELLED"), timeout=60)
    assert state.startswith("CANCELLED")
    # submitit sees it too, and its done() turns true (it never does without accounting)
    deadline = time.monotonic() + 30
    while not job.done(force_check=True):
        assert time.monotonic() < deadline, f"done() still false, state {job.state}"
        time.sleep(0.5)
    assert job.state.startswith("CANCELLED")
    # KillWait=5: the job step lets go of its CPU quickly
    deadline = time.monotonic() + 30
    while slurm_cluster.run("squeue", "-h", "-j", job.job_id, check=False).stdout.strip():
        assert time.monotonic() < deadline, "cancelled job still in squeue after 30s"
        time.sleep(0.5)


def test_failing_function(slurm_cluster, tmp_path):
    job = make_executor(tmp_path).submit(fail_with, "boom from the job")
    with pytest.raises(FailedJobError) as excinfo:
        wait_result(job)
    message = str(excinfo.value)
    assert "Traceback" in message
    assert "ValueError: boom from the job" in message
    slurm_cluster.wait_sacct_state(job.job_id, lambda s: s == "FAILED", timeout=60)


def test_checkpointable_job_is_requeued_and_resumes(slurm_cluster, tmp_path):
    log_path = tmp_path / "progress.log"
    n_steps, step_s = 40, 0.25
    job = make_executor(tmp_path).submit(CountTo(), str(log_path), n_steps, step_s)

    def steps_logged() -> int:
        if not log_path.exists():
            return 0
        return sum(1 for line in log_path.read_text().splitlines() if line.startswith("step "))

    deadline = time.monotonic() + 60
    while steps_logged() < 4:
        assert time.monotonic() < deadline, f"job made no progress: {slurm_cluster.sacct_state(job.job_id)}"
        time.sleep(0.1)
    job._interrupt()  # preemption: SIGTERM (ignored by submitit) then USR2 -> checkpoint + requeue
    # the requeued job would only be eligible again after Slurm's fixed 121 s requeue delay
    slurm_cluster.release_requeued(job.job_id)

    assert wait_result(job, timeout=100) == n_steps
    lines = log_path.read_text().splitlines()
    starts = [int(line.split()[1]) for line in lines if line.startswith("start ")]
    assert len(starts) == 2, f"expected two runs, log:\n{lines}"
    assert starts[0] == 0
    # the second run went on from the checkpointed progress, not from scratch
    assert 4 <= starts[1] < n_steps, f"second run started at step {starts[1]}"
    assert lines[-2:] == [f"step {n_steps}", "done"]
    slurm_cluster.wait_sacct_state(job.job_id, lambda s: s == "COMPLETED", timeout=60)
    runs = slurm_cluster.sacct_states(job.job_id, duplicates=True)
    assert "REQUEUED" in runs or "PREEMPTED" in runs, f"sacct --duplicates: {runs}"
