"""The local executor's GPU handling: which GPUs it sees, how it shares them out, what each job gets.

No GPU exists here, so the jobs below are real submitit processes that report the environment they
were given (CUDA_VISIBLE_DEVICES, torch.distributed's variables) instead of training on it.
"""
from __future__ import annotations

import os

import pytest

from bench.launch import GpuSlots, LaunchError, check_local_gpus, gpu_ids, local_dist_env, local_executor


def test_gpu_ids_follow_cuda_visible_devices(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "2.13.0+cu126" if n == "torch" else real(n))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu_ids() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,-1,1")  # CUDA stops at the first invalid id
    assert gpu_ids() == ["0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_ids() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-1f2e,MIG-3a4b")
    assert gpu_ids() == ["MIG-1f2e", "MIG-3a4b"]


def test_cpu_wheel_sees_no_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert gpu_ids() == []  # this machine's torch is the CPU wheel


def test_slots_give_each_job_its_own_gpus_and_make_the_next_wait():
    s = GpuSlots(["0", "1", "2", "3"])
    a = s.take(1)
    b = s.take(2)
    assert a == ["0"] and b == ["1", "2"]
    assert s.take(2) is None  # one left: a 2-GPU job waits
    assert s.take(0) == []  # a CPU job needs none
    s.give(a)
    assert s.take(2) == ["0", "3"]
    s.give(b)
    assert s.free == ["1", "2"]


class _Spec:
    def __init__(self, gpus, row="r"):
        self.gpus = gpus
        self.targets = [{"table": "paper/table-1", "row": row}]


def test_run_needing_more_gpus_than_the_machine_is_refused_before_anything_starts():
    check_local_gpus([_Spec(0), _Spec(2)], ["0", "1"])
    with pytest.raises(LaunchError) as e:
        check_local_gpus([_Spec(1), _Spec(8, "mask-1x")], ["0"])
    msg = str(e.value)
    assert "paper/table-1/mask-1x: the run needs 8 GPU(s) and this machine shows 1 GPU(s) (0)" in msg
    assert "--gpus 1" in msg and "--cluster slurm" in msg
    with pytest.raises(LaunchError, match="shows 0 GPU\\(s\\). Run it on a GPU machine, or use --cluster slurm"):
        check_local_gpus([_Spec(1)], [])


def _report_env():
    from bench.launch import local_dist_env

    env = local_dist_env()
    return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"), **env}


def test_local_job_sees_only_its_gpus(tmp_path):
    job = local_executor(tmp_path / "a", 5, ["1", "3"]).submit(_report_env)
    outs = job.results()  # one process per GPU
    assert len(outs) == 2
    assert {o["CUDA_VISIBLE_DEVICES"] for o in outs} == {"1,3"}
    assert sorted(o["RANK"] for o in outs) == ["0", "1"] and {o["WORLD_SIZE"] for o in outs} == {"2"}
    assert sorted(o["LOCAL_RANK"] for o in outs) == ["0", "1"]
    assert len({o["MASTER_PORT"] for o in outs}) == 1 and {o["MASTER_ADDR"] for o in outs} == {"127.0.0.1"}


def test_cpu_job_sees_no_gpu_and_mig_ids_pass_through(tmp_path):
    cpu = local_executor(tmp_path / "c", 5, []).submit(_report_env).result()
    assert cpu == {"CUDA_VISIBLE_DEVICES": ""}  # a single process: no torch.distributed variables
    mig = local_executor(tmp_path / "m", 5, ["MIG-1f2e"]).submit(_report_env).result()
    assert mig == {"CUDA_VISIBLE_DEVICES": "MIG-1f2e"}


def test_dist_env_is_empty_outside_a_multi_task_local_job():
    assert local_dist_env({}) == {}
    assert local_dist_env({"SUBMITIT_EXECUTOR": "slurm", "SUBMITIT_LOCAL_NTASKS": "4"}) == {}
    assert local_dist_env({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "1"}) == {}
