"""Multi-process training on the CPU (torch.distributed with gloo), in real processes: `bench run --tasks 2`
locally (submitit's local executor) and through the real SLURM test cluster (one job, 2 tasks), a
preempted 2-task job that requeues and resumes with both ranks, and what rank 1 must not write."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from bench.results import read_result
from tests.conftest import REPO, TINY_SCALE, bench_env, bench_exe

RESUME_SCALE = REPO / "tests" / "data" / "smoke-resume.yaml"
PROFILE = REPO / "slurm" / "local-test.yaml"
REAL_RECIPES = REPO / "recipes"


def _bench(env, *args, timeout=600):
    return subprocess.run([bench_exe(), *args], env=env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------- units
def test_backend_follows_the_device():
    from bench.distributed import DistError, backend_for

    assert backend_for("cuda") == "nccl"
    assert backend_for("cpu") == "gloo"
    with pytest.raises(DistError, match="'mps' is not supported.*CUDA \\(NCCL\\) or on the CPU \\(gloo\\)"):
        backend_for("mps")


def test_rank_variables_from_slurm_and_from_the_local_executor():
    from bench.distributed import rank_env
    from bench.launch import local_dist_env

    slurm = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1", "SLURM_JOB_NUM_NODES": "1",
             "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "vm"}
    env = rank_env(slurm)
    assert env == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(20000 + 4242)}
    assert rank_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == {}   # one task: no process group
    local = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_GLOBALID": "1",
             "SUBMITIT_LOCAL_LOCALID": "1", "SUBMITIT_LOCAL_JOB_ID": "777"}
    assert rank_env(local_dist_env(local)) == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                                               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "20777"}


def test_a_cpu_run_reverts_the_paper_configs_syncbn_and_says_so():
    """sbr-cnn Table 11's GC-Net row trains with SyncBN (mmdet's gcnet config), which torch runs only on GPUs."""
    from bench.distributed import cpu_changes
    from bench.recipes import Catalogue
    from bench.resolve import row_config

    cfg = row_config(Catalogue(REAL_RECIPES).load("sbr-cnn/table-11").row("gcnet").model).to_dict()
    assert "SyncBN" in json.dumps(cfg["model"])
    changes = cpu_changes(cfg)
    assert "SyncBN" not in json.dumps(cfg["model"]) and cfg["model"]["backbone"]["norm_cfg"]["type"] == "BN"
    assert any(c.startswith("SyncBN -> BN") and "model.backbone.norm_cfg" in c for c in changes)
    assert cfg["model_wrapper_cfg"]["device_ids"] is None


def test_plan_splits_the_total_batch_over_the_tasks(tmp_path, monkeypatch):
    from bench.plan import PlanError, make_plan
    from bench.recipes import Catalogue

    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "data"))
    t = Catalogue(REPO / "tests" / "data" / "recipes").load("pipeline-test/table-1")
    one = next(iter(make_plan([(t, [t.row("tiny")])], str(TINY_SCALE), tmp_path).runs.values()))
    two = next(iter(make_plan([(t, [t.row("tiny")])], str(TINY_SCALE), tmp_path, tasks=2).runs.values()))
    assert (one.tasks, one.batch_size, one.config["train_dataloader"]["batch_size"]) == (1, 2, 2)
    assert (two.tasks, two.batch_size, two.config["train_dataloader"]["batch_size"]) == (2, 2, 1)
    assert two.lr == one.lr and two.run_key != one.run_key
    plan = make_plan([(t, [t.row("tiny")])], str(TINY_SCALE), tmp_path, tasks=3)  # 3 processes, 2 images
    assert not plan.runs and "--tasks 3 is more processes than the total batch of 2" in plan.rows[0].reason
    with pytest.raises(PlanError, match="--gpus and --tasks are exclusive"):
        make_plan([(t, [t.row("tiny")])], "paper", tmp_path, gpus=2, tasks=2)


def test_other_ranks_leave_the_runs_records_to_rank_0(tmp_path, monkeypatch):
    """Rank 1 trains beside rank 0 but must write nothing: no result, no lock, no state, and it must not
    clear the pending record (it ends before rank 0, which still measures: `bench status` showed the
    running row as 'not run' on the SLURM cluster)."""
    import bench.job as job
    from bench.launch import _job_entry, mark_pending, pending_path
    from bench.plan import make_plan
    from bench.recipes import Catalogue

    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "data"))
    t = Catalogue(REPO / "tests" / "data" / "recipes").load("pipeline-test/table-1")
    spec = next(iter(make_plan([(t, [t.row("tiny")])], str(TINY_SCALE), tmp_path / "results", tasks=2).runs.values()))
    mark_pending(spec, "local", "123", None)
    trained = []
    monkeypatch.setattr(job, "_train_and_measure", lambda s, w, r: trained.append(s.run_key) or ({}, {}, {}))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _job_entry(spec) == []
    assert trained == [spec.run_key]
    target = Path(spec.targets[0]["path"])
    assert not target.exists() and pending_path(target).exists()
    work = Path(spec.work_dir)
    assert sorted(p.name for p in work.iterdir()) == ["job.json"]   # what mark_pending wrote, nothing else


# ------------------------------------------------------------------------------- local processes
def _check_one_result_by_rank_0(results: Path, table: str, row: str, tasks: int, eval_images: int) -> dict:
    """The checks every multi-process run must pass; returns the result's measurement.distributed."""
    table_dir = results / "smoke" / table
    assert sorted(p.name for p in table_dir.iterdir()) == [f"{row}.json", f"{row}.matches.npz"]
    res = read_result(table_dir / f"{row}.json")
    assert res.status == "done", res.failure
    d = res.measurement.distributed
    assert (d["world_size"], d["backend"], d["device"]) == (tasks, "gloo", "cpu")
    assert d["total_batch"] == d["per_task_batch"] * tasks == res.measurement.batch_size == d["batch_asked"]
    # the metrics come from every evaluation image, once (the sampler pads 5 images to 6 over 2 ranks)
    n = res.measurement.eval_images
    assert n == eval_images and d["eval_gathered"] == {"samples": n, "images": n, "size": n}
    from bench.matches import load

    for m in load(table_dir / f"{row}.matches.npz").values():
        assert m.n_images == n and len(np.unique(m.img_ids)) == n
    # the checkpoints rank 0 saved, each with the checksum only rank 0's hook writes
    (run,) = (results / "smoke" / "runs").iterdir()
    ckpts = sorted(p.name for p in (run / "train").glob("iter_*.pth"))
    assert ckpts and all((run / "train" / f"{c}.sha256").exists() for c in ckpts)
    return {"res": res, "d": d, "run": run}


def _task_results(folder: Path) -> dict[int, object]:
    out = {}
    for p in folder.glob("*_result.pkl"):
        task = int(p.name.split("_")[-2])
        outcome, value = pickle.loads(p.read_bytes())
        assert outcome == "success", value
        out[task] = value
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_cpu_tasks_train_one_result_with_the_one_task_batch_and_lr(tmp_path):
    """`bench run --tasks 2` (local): 2 gloo processes train the pipeline table's tiny Mask R-CNN; one
    result, by rank 0, from every evaluation image, equal in total batch and lr to the 1-task run."""
    env2 = bench_env(tmp_path / "r2", tmp_path / "data")
    p = _bench(env2, "run", "pipeline-test/table-1", "tiny", "--scale", str(TINY_SCALE), "--tasks", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    two = _check_one_result_by_rank_0(tmp_path / "r2", "pipeline-test/table-1", "tiny", 2, eval_images=5)
    d = two["d"]
    assert [r["rank"] for r in d["ranks"]] == [0, 1] and len({r["pid"] for r in d["ranks"]}) == 2
    tasks = _task_results(two["run"] / "submitit")
    assert tasks[0] == [str(tmp_path / "r2" / "smoke" / "pipeline-test" / "table-1" / "tiny.json")] and tasks[1] == []
    st = json.loads(_bench(env2, "status", "pipeline-test/table-1", "--json").stdout)
    assert [(r["row"], r["run_status"]) for r in st if r["run_status"] != "not run"] == [("tiny", "done")]

    env1 = bench_env(tmp_path / "r1", tmp_path / "data")
    p = _bench(env1, "run", "pipeline-test/table-1", "tiny", "--scale", str(TINY_SCALE))
    assert p.returncode == 0, p.stdout + p.stderr
    one = read_result(tmp_path / "r1" / "smoke" / "pipeline-test" / "table-1" / "tiny.json").measurement
    assert one.distributed["world_size"] == 1 and one.distributed["per_task_batch"] == 2
    assert one.distributed["total_batch"] == d["total_batch"] == 2
    assert one.lr == two["res"].measurement.lr == d["lr"] == d["paper_lr"]
    assert one.iterations == two["res"].measurement.iterations == 6


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_cpu_tasks_train_a_syncbn_paper_config(tmp_path):
    """sbr-cnn Table 11's GC-Net row (mmdet's SyncBN gcnet config) in 2 gloo processes: torch's SyncBatchNorm
    refuses CPU tensors, so the run reverts it to BN and the result says so."""
    env = bench_env(tmp_path / "r", tmp_path / "data", REAL_RECIPES)
    p = _bench(env, "run", "sbr-cnn/table-11", "gcnet", "--scale", str(TINY_SCALE), "--tasks", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    res = read_result(tmp_path / "r" / "smoke" / "sbr-cnn" / "table-11" / "gcnet.json")
    d = res.measurement.distributed
    assert res.status == "done" and d["world_size"] == 2 and d["backend"] == "gloo"
    assert any(c.startswith("SyncBN -> BN") and "model.backbone.norm_cfg" in c for c in d["cpu_changes"])
    assert d["eval_gathered"]["samples"] == res.measurement.eval_images == 5


# --------------------------------------------------------------------------------------------- SLURM
def _status(env, table="pipeline-test/table-1"):
    p = _bench(env, "status", table, "--json")
    assert p.returncode == 0, p.stderr
    return {r["row"]: r for r in json.loads(p.stdout)}


def _wait(env, predicate, timeout=600):
    deadline = time.time() + timeout
    st = {}
    while time.time() < deadline:
        st = _status(env)["tiny"]
        if predicate(st):
            return st
        time.sleep(1)
    raise AssertionError(f"timed out waiting: {json.dumps(st, indent=1)}")


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_two_task_slurm_job_is_preempted_requeued_and_resumes_on_both_ranks(slurm_cluster, tmp_path):
    """One SLURM job with 2 tasks (--ntasks-per-node 2) through mmengine's slurm launcher label and bench's
    gloo process group; preempted mid-training (submitit's SIGUSR2 path, as SLURM preemption), requeued,
    and both ranks resume from the last complete checkpoint; one result, by rank 0."""
    import submitit

    env = bench_env(tmp_path / "results", tmp_path / "data") | slurm_cluster.env
    p = _bench(env, "run", "pipeline-test/table-1", "tiny", "--scale", str(RESUME_SCALE), "--tasks", "2",
               "--cluster", "slurm", "--profile", str(PROFILE))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 CPU tasks (gloo) each" in p.stdout, p.stdout
    job = _status(env)["tiny"]["job"]
    script = next(Path(job["folder"]).glob("*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --nodes=1" in script
    st = _wait(env, lambda r: r["run_status"] == "running" and r["progress"]
               and int(r["progress"].split()[1].split("/")[0]) >= 10)
    assert st["run_status"] == "running"  # rank 1 never clears the pending record under rank 0
    submitit.SlurmJob(folder=job["folder"], job_id=job["job_id"])._interrupt()  # preemption: SIGTERM + USR2
    slurm_cluster.release_requeued(job["job_id"])
    st = _wait(env, lambda r: r["run_status"] in ("done", "failed"))
    assert st["run_status"] == "done", json.dumps(st, indent=1)
    assert len(slurm_cluster.sacct_states(job["job_id"], duplicates=True)) >= 2   # ran twice: requeued

    results = tmp_path / "results"
    checked = _check_one_result_by_rank_0(results, "pipeline-test/table-1", "tiny", 2, eval_images=4)
    m = checked["res"].measurement
    assert m.resumed_from and "iter_" in m.resumed_from and m.iterations == 24
    resumed_iter = int(m.resumed_from.rsplit("iter_", 1)[1].split(".")[0])
    assert resumed_iter >= 8
    ranks = m.distributed["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["start_iter"] for r in ranks} == {resumed_iter}
    # the requeued job's tasks: rank 0 returned the result path, rank 1 nothing
    tasks = _task_results(Path(job["folder"]))
    assert tasks[0] == [str(results / "smoke" / "pipeline-test" / "table-1" / "tiny.json")] and tasks[1] == []


# ------------------------------------------------------------------------- paper-config preflight
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("table,row", [("sbr-cnn/table-2", "mask-1x"),
                                       ("amf-sparseinst/table-10", "amf-sparseinst-r50d-dcn-608")],
                         ids=["mask-rcnn", "sparseinst"])
def test_two_task_preflight_of_a_paper_config(table, row, tmp_path):
    """`bench preflight --tasks 2` on a paper config (the real-format COCO fixture, layout-true fabricated
    checkpoints, 1 iteration): both gloo ranks train (every trainable tensor gets a gradient through DDP),
    the evaluation is gathered on rank 0, and a smaller per-process batch is recorded as such."""
    from bench.data.fake_weights import fabricate
    from bench.data.layouts import write_coco
    from bench.plan import make_plan
    from bench.recipes import Catalogue

    coco, weights = tmp_path / "coco", tmp_path / "weights"
    write_coco(coco, train_images=4, val_images=2, test_images=2)
    weights.mkdir()
    t = Catalogue(REAL_RECIPES).load(table)
    plan = make_plan([(t, [t.row(row)])], "paper", tmp_path / "plan", data_root={"coco": coco}, force=True,
                     weights_dirs=[weights], tasks=2)
    (spec,) = plan.runs.values()
    fabricate(spec.config, weights, only={w["file_name"] for w in spec.weights})
    planned = spec.config["train_dataloader"]["batch_size"]
    assert planned == t.row(row).train.batch_size // 2   # the paper's total batch split over the 2 processes
    env = bench_env(tmp_path / "results", tmp_path / "data", REAL_RECIPES)
    p = _bench(env, "preflight", table, "--row", row, "--tasks", "2", "--batch-per-task", "1", "--iters", "1",
               "--data-root", f"coco={coco}", "--weights-dir", str(weights), "--json", timeout=880)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (rec,) = json.loads(p.stdout)
    assert rec["status"] == "ok" and rec["tasks"] == 2 and rec["backend"] == "gloo", rec
    assert [r["rank"] for r in rec["ranks"]] == [0, 1] and all(r["status"] == "ok" for r in rec["ranks"])
    for r in rec["ranks"]:
        n, of = r["grad_params"].split(" of ")[0], r["grad_params"].split(" of ")[1].split()[0]
        assert n == of and int(n) > 0, r["grad_params"]
        assert r["losses"]["loss"] == r["losses"]["loss"]   # finite on both ranks
    assert rec["eval_images"] == 2 and rec["train_images"] == 4
    # the distributed sampler gave each rank its own evaluation image; rank 0's metrics cover both
    assert [r["eval_processed"] for r in rec["ranks"]] == [1, 1]
    assert rec["batch_override"] == {"planned": planned, "used": 1, "why": rec["batch_override"]["why"]}
    assert rec["batch_per_gpu"] == 1
    assert any("DistributedDataParallel" in c for c in rec["cpu_changes"])
    assert all(w["ok"] and w["loaded_fraction"] > 0.9 for w in rec["weights"]), rec["weights"]


def test_batch_per_task_needs_tasks(tmp_path):
    env = bench_env(tmp_path / "results", tmp_path / "data", REAL_RECIPES)
    p = _bench(env, "preflight", "sbr-cnn/table-2", "--row", "mask-1x", "--batch-per-task", "1",
               "--data-root", f"coco={tmp_path}")
    assert p.returncode != 0 and "--batch-per-task sets the batch of each of --tasks N processes" in p.stderr


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_two_nodes_one_task_each_through_slurm(slurm_cluster_2_nodes, tmp_path):
    """2 nodes x 1 task: a profile with ``nodes: 2`` puts one rank on each of the test cluster's two nodes
    (two slurmd on this host); rank 0 listens on the first node's NodeAddr, rank 1 joins from the other
    node, and rank 0 alone writes the result, from every evaluation image."""
    import yaml

    cluster = slurm_cluster_2_nodes
    profile = yaml.safe_load(PROFILE.read_text()) | {"name": "local-test-2-nodes", "nodes": 2}
    prof = tmp_path / "two-nodes.yaml"
    prof.write_text(yaml.safe_dump(profile))
    env = bench_env(tmp_path / "results", tmp_path / "data") | cluster.env
    p = _bench(env, "run", "pipeline-test/table-1", "tiny", "--scale", str(TINY_SCALE), "--tasks", "2",
               "--cluster", "slurm", "--profile", str(prof))
    assert p.returncode == 0, p.stdout + p.stderr
    job = _status(env)["tiny"]["job"]
    script = next(Path(job["folder"]).glob("*_submission.sh")).read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    st = _wait(env, lambda r: r["run_status"] in ("done", "failed"))
    assert st["run_status"] == "done", json.dumps(st, indent=1)
    checked = _check_one_result_by_rank_0(tmp_path / "results", "pipeline-test/table-1", "tiny", 2, eval_images=5)
    ranks = checked["d"]["ranks"]
    assert [(r["rank"], r["node"]) for r in ranks] == [(0, "n1"), (1, "n2")]
    tasks = _task_results(Path(job["folder"]))
    assert tasks[0] == [str(tmp_path / "results" / "smoke" / "pipeline-test" / "table-1" / "tiny.json")]
    assert tasks[1] == []
