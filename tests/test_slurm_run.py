"""`bench run --cluster slurm` on a real single-node SLURM cluster: job arrays, results, failures,
cancellation, and a preempted job that requeues itself and resumes from its checkpoint."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from bench.results import read_result
from tests.conftest import REPO, TINY_SCALE, bench_env, bench_exe

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]
PROFILE = REPO / "slurm" / "local-test.yaml"
RESUME_SCALE = REPO / "tests" / "data" / "smoke-resume.yaml"


def _bench(env, *args, timeout=300):
    return subprocess.run([bench_exe(), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _status(env, table="pipeline-test/table-1"):
    p = _bench(env, "status", table, "--json")
    assert p.returncode == 0, p.stderr
    return {r["row"]: r for r in json.loads(p.stdout)}


def _wait(env, rows, predicate, timeout=600):
    deadline = time.time() + timeout
    st = {}
    while time.time() < deadline:
        st = _status(env)
        if all(predicate(st[r]) for r in rows):
            return st
        time.sleep(2)
    raise AssertionError(f"timed out waiting: {json.dumps({r: st.get(r) for r in rows}, indent=1)}")


def test_table_through_slurm(slurm_cluster, tmp_path):
    env = bench_env(tmp_path / "results", tmp_path / "data") | slurm_cluster.env
    p = _bench(env, "run", "pipeline-test/table-1", "--scale", str(TINY_SCALE), "--cluster", "slurm",
               "--profile", str(PROFILE))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "job array" in p.stdout and "2 run(s)" in p.stdout
    st = _status(env)
    jobs = {st[r]["job"]["job_id"] for r in ("tiny", "tiny-nan")}
    arrays = {j.split("_")[0] for j in jobs}
    assert len(jobs) == 2 and len(arrays) == 1 and all("_" in j for j in jobs)  # one array, two tasks
    st = _wait(env, ["tiny", "tiny-nan"], lambda r: r["run_status"] in ("done", "failed"))
    assert st["tiny"]["run_status"] == "done"
    assert st["tiny-nan"]["run_status"] == "failed" and "NaN" in st["tiny-nan"]["failure"]
    res = read_result(tmp_path / "results" / "smoke" / "pipeline-test" / "table-1" / "tiny.json")
    assert res.measured["params_M"] > 10 and res.measurement.iterations == 6
    failed_job = next(j for j in jobs if j.endswith("_1"))
    assert slurm_cluster.wait_sacct_state(failed_job, lambda s: s.startswith("FAILED"))

    # a second submission skips what is done
    p = _bench(env, "run", "pipeline-test/table-1", "tiny", "--scale", str(TINY_SCALE), "--cluster", "slurm",
               "--profile", str(PROFILE))
    assert "nothing to run" in p.stdout


def test_test_time_variant_waits_for_the_training_it_evaluates(slurm_cluster, tmp_path):
    env = bench_env(tmp_path / "results", tmp_path / "data") | slurm_cluster.env
    p = _bench(env, "run", "pipeline-test/table-3", "--scale", str(TINY_SCALE), "--cluster", "slurm",
               "--profile", str(PROFILE))
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("job array")]
    assert len(lines) == 2 and "after" in lines[1], p.stdout  # the second array depends on the first
    first = lines[0].split()[2].rstrip(":")
    assert f"after {first}" in lines[1]  # (a one-task array is the job id itself)
    deadline = time.time() + 600
    while time.time() < deadline:
        st = _status(env, "pipeline-test/table-3")
        if all(st[r]["run_status"] in ("done", "failed") for r in ("thr-low", "thr-high")):
            break
        time.sleep(2)
    table = tmp_path / "results" / "smoke" / "pipeline-test" / "table-3"
    low, high = read_result(table / "thr-low.json"), read_result(table / "thr-high.json")
    assert low.status == high.status == "done"
    assert high.measurement.trained_by.startswith(f"run {low.run_key} ") and high.measurement.phases_s["train"] == 0


def test_cancel_a_queued_row(slurm_cluster, tmp_path):
    env = bench_env(tmp_path / "results", tmp_path / "data") | slurm_cluster.env
    p = _bench(env, "run", "pipeline-test/table-1", "tiny", "--scale", str(RESUME_SCALE), "--cluster", "slurm",
               "--profile", str(PROFILE))
    assert p.returncode == 0, p.stdout + p.stderr
    job = _status(env)["tiny"]["job"]["job_id"]
    p = _bench(env, "cancel", "pipeline-test/table-1", "tiny")
    assert p.returncode == 0 and "cancelled" in p.stdout, p.stdout + p.stderr
    assert _status(env)["tiny"]["run_status"] == "cancelled"
    assert slurm_cluster.wait_sacct_state(job, lambda s: s.startswith("CANCELLED"))


def test_preempted_job_requeues_and_resumes(slurm_cluster, tmp_path):
    import submitit

    env = bench_env(tmp_path / "results", tmp_path / "data") | slurm_cluster.env
    p = _bench(env, "run", "pipeline-test/table-1", "tiny", "--scale", str(RESUME_SCALE), "--cluster", "slurm",
               "--profile", str(PROFILE))
    assert p.returncode == 0, p.stdout + p.stderr
    st = _wait(env, ["tiny"], lambda r: r["run_status"] == "running" and r["progress"]
               and int(r["progress"].split()[1].split("/")[0]) >= 10)
    job = st["tiny"]["job"]
    submitit.SlurmJob(folder=job["folder"], job_id=job["job_id"])._interrupt()  # preemption: SIGTERM + USR2
    slurm_cluster.release_requeued(job["job_id"])
    st = _wait(env, ["tiny"], lambda r: r["run_status"] in ("done", "failed"))
    assert st["tiny"]["run_status"] == "done", json.dumps(st["tiny"], indent=1)
    res = read_result(tmp_path / "results" / "smoke" / "pipeline-test" / "table-1" / "tiny.json")
    assert res.measurement.resumed_from and "iter_" in res.measurement.resumed_from
    assert res.measurement.iterations == 24
