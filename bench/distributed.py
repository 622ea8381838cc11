"""Multi-process training: one process per GPU (NCCL) or, on a machine without CUDA, several CPU
processes (gloo), started by submitit's local executor, by SLURM (one task per process) or by
:func:`spawn` (``bench preflight --tasks``).

bench initialises ``torch.distributed`` itself, before mmengine's Runner is built (the Runner then
sees an initialised process group and only labels the launcher): mmengine's own ``slurm`` and
``pytorch`` launchers call ``torch.cuda.set_device``, which a CPU process cannot do, and its DDP
wrapper passes ``device_ids=[LOCAL_RANK]``, which DistributedDataParallel refuses for a CPU module.

What a CPU run changes in a config that was written for GPUs is done here and returned as a list of
sentences, which the result records (``measurement.distributed.cpu_changes``).
"""
from __future__ import annotations

import copy
import os
import subprocess
from typing import Any, Optional

SYNC_BN_TYPES = ("SyncBN", "MMSyncBN", "NaiveSyncBN", "TorchSyncBN")


class DistError(RuntimeError):
    """A multi-process run this machine cannot carry out; the message says why and what to do."""


def backend_for(device: str) -> str:
    """torch.distributed's backend for the processes' device: NCCL on CUDA, gloo on the CPU."""
    if device == "cuda":
        return "nccl"
    if device == "cpu":
        return "gloo"
    raise DistError(f"multi-process training on device {device!r} is not supported by bench: it runs on CUDA "
                    "(NCCL) or on the CPU (gloo); hide the other accelerator or run one process")


def job_device() -> str:
    """The device this process trains on, as mmengine chooses it (cuda, cpu, or another accelerator)."""
    from mmengine.device import get_device

    return get_device()


def rank_env(env: Optional[dict] = None) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT of this task: from torchrun's or
    bench's local variables when set, else from SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID;
    the master is loopback on a one-node job, else the job's first node; the port follows the job id,
    so every task of a job, and the same job requeued, agree on it). Empty for a single process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        out = {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k in env}
        out.setdefault("LOCAL_RANK", out["RANK"])
        out.setdefault("MASTER_ADDR", "127.0.0.1")
        out.setdefault("MASTER_PORT", "29500")
        return out if int(out["WORLD_SIZE"]) > 1 else {}
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
        addr = "127.0.0.1"
        if nodes > 1:
            addr = first_node_addr(env["SLURM_JOB_NODELIST"])
        job = int(env.get("SLURM_JOB_ID", "0"))
        return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
                "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
                "MASTER_ADDR": env.get("MASTER_ADDR", addr),
                "MASTER_PORT": env.get("MASTER_PORT", str(20000 + job % 20000))}
    return {}


def first_node_addr(nodelist: str) -> str:
    """The address of a job's first node, where rank 0 listens: its NodeAddr in SLURM's node table (a
    node's name need not resolve: several slurmd on one host, or names that are not host names), else
    the name itself."""
    first = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                           timeout=30).stdout.split()[0]
    out = subprocess.run(["scontrol", "-o", "show", "node", first], capture_output=True, text=True, timeout=30).stdout
    for field in out.split():
        if field.startswith("NodeAddr=") and field[len("NodeAddr="):]:
            return field[len("NodeAddr="):]
    return first


def world_size() -> int:
    return int(rank_env().get("WORLD_SIZE", "1"))


def tasks_on_this_node(env: Optional[dict] = None) -> int:
    env = os.environ if env is None else env
    for k in ("SLURM_NTASKS_PER_NODE", "SUBMITIT_LOCAL_NTASKS", "LOCAL_WORLD_SIZE"):
        v = env.get(k, "")
        if v.split("(")[0].isdigit():
            return int(v.split("(")[0])
    return int(rank_env(env).get("WORLD_SIZE", "1"))


def init(timeout_s: int = 1800) -> Optional[dict]:
    """Start this task's process group (no-op for a single process, or if one is already up).
    Returns {world_size, rank, backend, device, threads} or None for a single process."""
    import datetime as dt

    import torch
    import torch.distributed as dist

    renv = rank_env()
    if not renv:
        return None
    os.environ.update(renv)
    device = job_device()
    backend = backend_for(device)
    threads = torch.get_num_threads()
    if device == "cuda":
        torch.cuda.set_device(int(renv["LOCAL_RANK"]) % max(1, torch.cuda.device_count()))
    else:  # the node's cores shared out between its tasks, so the ranks do not oversubscribe them
        threads = max(1, (os.cpu_count() or 1) // max(1, tasks_on_this_node()))
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", timeout=dt.timedelta(seconds=timeout_s))
    return {"world_size": dist.get_world_size(), "rank": dist.get_rank(), "backend": backend, "device": device,
            "threads_per_task": threads}


def cpu_changes(cfg: dict) -> list[str]:
    """Make a GPU-written config run with several CPU processes, in place; say what changed.

    SyncBN (CUDA only in torch) becomes BN, as mmengine itself reverts it when a run is not
    distributed; ``sync_bn`` (mmengine's convert-to-SyncBN switch) is dropped; the DDP wrapper gets
    ``device_ids=None`` (a CPU module); ``find_unused_parameters`` is kept (gloo supports it)."""
    changes: list[str] = []
    reverted: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") in SYNC_BN_TYPES:
                reverted.append(f"{path} ({node['type']})")
                node["type"] = "BN"
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(cfg.get("model"), "model")
    if reverted:
        changes.append("SyncBN -> BN (torch's SyncBatchNorm runs only on GPUs; BN as mmengine reverts it "
                       "without distribution): " + ", ".join(reverted))
    if cfg.pop("sync_bn", None) is not None:
        changes.append("sync_bn dropped (converting BN to SyncBN needs GPUs)")
    wrapper = cfg.get("model_wrapper_cfg") or {"type": "MMDistributedDataParallel", "broadcast_buffers": False,
                                               "find_unused_parameters": bool(cfg.get("find_unused_parameters", False))}
    wrapper = copy.deepcopy(wrapper)
    wrapper["device_ids"] = None
    cfg["model_wrapper_cfg"] = wrapper
    changes.append("DistributedDataParallel with device_ids=None (CPU module)")
    if wrapper.get("find_unused_parameters"):
        changes.append("find_unused_parameters=True kept (gloo supports it)")
    return changes


def record(info: dict, spec, per_task_batch: Optional[int], changes: list[str]) -> dict:
    """What a result says about how its training was split (``measurement.distributed``): processes,
    backend, each process's batch and their total against the total asked (the paper's, or the smoke
    scale's), the lr used against the recipe's (before any batch scaling), what the CPU run changed."""
    tasks = info["world_size"] if info else 1
    total = (per_task_batch or 0) * tasks if per_task_batch else None
    out = {"world_size": tasks, "backend": info["backend"] if info else None,
           "device": info["device"] if info else None, "per_task_batch": per_task_batch, "total_batch": total,
           "lr": spec.lr, "paper_lr": spec.lr_scaled_from if spec.lr_scaled_from is not None else spec.lr,
           "batch_asked": (spec.overlay or {}).get("batch_asked", spec.batch_size), "cpu_changes": changes}
    if info:
        out["threads_per_task"] = info.get("threads_per_task")
    return out


class _Gathered(dict):
    """What the evaluation's metrics received after mmengine gathered every rank's results (rank 0)."""


def _img_id(item: Any) -> Any:
    for part in (item if isinstance(item, (tuple, list)) else (item,)):
        if isinstance(part, dict) and "img_id" in part:
            return part["img_id"]
    return None


class gathered:
    """Within the block, each metric's gathered results (``mmengine.dist.collect_results``, which drops
    the distributed sampler's padding) are counted: ``samples`` and distinct ``images`` (by img_id),
    the last metric's; None on ranks other than 0 (they receive nothing)."""

    def __enter__(self) -> "_Gathered":
        import mmengine.evaluator.metric as metric_mod

        self._mod, self._orig = metric_mod, metric_mod.collect_results
        got = self.got = _Gathered()

        def collect(results, size, *a, **kw):
            out = self._orig(results, size, *a, **kw)
            if out is not None:
                ids = [_img_id(r) for r in out]
                got.update(samples=len(out), images=len({i for i in ids if i is not None}), size=size)
            return out

        metric_mod.collect_results = collect
        return got

    def __exit__(self, *exc) -> bool:
        self._mod.collect_results = self._orig
        return False


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def start_iter_hook(info: dict):
    """An mmengine hook that, when training starts (after mmengine resumed from a checkpoint), gathers
    every rank's pid, host and starting iteration into ``info["ranks"]``: a resumed run shows each of
    its processes resuming from the same iteration."""
    import os
    import socket

    import torch.distributed as dist
    from mmengine.hooks import Hook

    class BenchRankStartHook(Hook):
        priority = "LOWEST"

        def before_train(self, runner) -> None:
            mine = {"rank": dist.get_rank(), "pid": os.getpid(), "host": socket.gethostname(),
                    "node": os.environ.get("SLURMD_NODENAME"), "start_iter": runner.iter}
            out: list = [None] * dist.get_world_size()
            dist.all_gather_object(out, mine)
            info["ranks"] = out

    return BenchRankStartHook()


def ddp_wrap(model, cfg):
    """``model`` wrapped for training in DistributedDataParallel when a process group is up (CPU:
    no device ids), else ``model`` itself: what the preflight's training iterations call forward on."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return model
    from mmengine.model import MMDistributedDataParallel

    wrapper = dict(cfg.get("model_wrapper_cfg") or {})
    return MMDistributedDataParallel(
        module=model, device_ids=None, broadcast_buffers=wrapper.get("broadcast_buffers", False),
        find_unused_parameters=bool(wrapper.get("find_unused_parameters", cfg.get("find_unused_parameters", False))))
