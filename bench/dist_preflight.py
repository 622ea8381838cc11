"""`bench preflight --tasks N`: the preflight of :mod:`bench.preflight` in N CPU processes (gloo), as
`bench run --tasks N` trains: each rank builds the same data, model and weights, trains with its share
of the paper's total batch through DistributedDataParallel (gradients all-reduced, the distributed
sampler giving each rank its own images), then the evaluation runs over the ranks' shards of the
evaluation images and is gathered on rank 0.

The ranks are processes of their own (``python -m bench.dist_preflight``, the run's spec pickled beside
them), on loopback, each with its share of the cores.
A rank that fails (or hangs past the timeout) fails the run, with that rank's reason; the others are
stopped.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from bench.plan import Plan, RunSpec
from bench.results import atomic_write_json


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _rank_main(rank: int, tasks: int, port: int, spec: RunSpec, iters: int, eval_images: int, out: str,
               timeout_s: int) -> None:
    """One rank: join the process group, preflight the run (CPU), write the record to ``out``."""
    threads = max(1, (os.cpu_count() or 1) // tasks)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(tasks), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
    rec: dict = {"rank": rank, "status": "failed", "reason": ""}
    try:
        import torch.distributed as dist

        from bench import distributed
        from bench.preflight import run_one

        info = distributed.init(timeout_s=timeout_s)
        spec = copy.deepcopy(spec)
        changes = distributed.cpu_changes(spec.config)
        rec = run_one(spec, iters=iters, device="cpu", eval_images=eval_images).as_dict()
        rec.update(rank=rank, cpu_changes=changes, backend=info["backend"] if info else None,
                   threads_per_task=info.get("threads_per_task") if info else None)
        if rec["status"] == "ok":
            dist.barrier()   # every rank got through: none is left waiting in a collective
        dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001 - the rank's failure is its record
        rec["status"] = "failed"
        rec["reason"] = rec.get("reason") or f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    Path(out).write_text(json.dumps(rec, default=str))


def run_tasks(spec: RunSpec, tasks: int, iters: int = 2, eval_images: Optional[int] = None,
              timeout_s: int = 1800) -> dict:
    """Preflight one run in ``tasks`` gloo processes; the record is rank 0's, failed if any rank failed,
    with every rank's status, s/iteration, peak memory and losses under ``ranks``."""
    from bench.preflight import EVAL_IMAGES

    eval_images = EVAL_IMAGES if eval_images is None else eval_images
    port = free_port()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-preflight-") as tmp:
        job = Path(tmp) / "spec.pkl"
        job.write_bytes(pickle.dumps((spec, iters, eval_images, timeout_s)))
        outs = [str(Path(tmp) / f"rank{r}.json") for r in range(tasks)]
        logs = [open(Path(tmp) / f"rank{r}.log", "w") for r in range(tasks)]
        procs = [subprocess.Popen([sys.executable, "-m", "bench.dist_preflight", str(job), str(r), str(tasks), str(port),
                                   outs[r]], stdout=logs[r], stderr=subprocess.STDOUT) for r in range(tasks)]
        deadline = time.monotonic() + timeout_s + 60
        failed_at: Optional[float] = None
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
            if failed_at is None and any(p.poll() not in (None, 0) or _failed(o) for p, o in zip(procs, outs)):
                failed_at = time.monotonic()   # a rank failed: the others get a moment to fail on their own
            if failed_at is not None and time.monotonic() - failed_at > 30:
                break
        for p in procs:   # only the processes started here
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for f in logs:
            f.close()
        ranks = []
        for r, (p, o) in enumerate(zip(procs, outs)):
            try:
                ranks.append(json.loads(Path(o).read_text()))
            except (OSError, ValueError):
                code = p.returncode
                why = (f"killed by signal {-code}" if code and code < 0 else
                       f"exited with status {code}" if code else "stopped after another rank failed or the timeout")
                tail = (Path(tmp) / f"rank{r}.log").read_text(errors="replace").strip().splitlines()[-1:]
                ranks.append({"rank": r, "status": "failed",
                              "reason": f"no record: {why}" + (f" ({tail[0][:300]})" if tail else "")})
    first = spec.targets[0]
    rec = dict(ranks[0]) if ranks[0].get("run_key") else {
        "table": first["table"], "row": first["row"], "run_key": spec.run_key, "rows": [
            f"{t['table']}/{t['row']}" for t in spec.targets], "iters": iters, "device": "cpu"}
    bad = [r for r in ranks if r.get("status") != "ok"]
    rec["status"] = "failed" if bad else "ok"
    rec["reason"] = "; ".join(f"rank {r['rank']}: {r.get('reason') or 'failed'}" for r in bad)
    rec["tasks"] = tasks
    rec["backend"] = "gloo"
    rec["device"] = f"cpu, {tasks} gloo processes" + (f" ({ranks[0].get('threads_per_task')} thread(s) each)"
                                                      if ranks[0].get("threads_per_task") else "")
    rec["ranks"] = [{k: r.get(k) for k in ("rank", "status", "reason", "s_per_iter", "first_iter_s", "peak_mem_mb",
                                           "losses", "grad_params", "eval_detections")} for r in ranks]
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    rec["finished_at"] = time.time()
    return rec


def _failed(out: str) -> bool:
    try:
        return json.loads(Path(out).read_text()).get("status") != "ok"
    except (OSError, ValueError):
        return False


def preflight_plan_tasks(plan: Plan, results_root: Path, tasks: int, iters: int = 2, use_cache: bool = False,
                         on_result=None) -> list[dict]:
    """:func:`bench.preflight.preflight_plan` with every run in ``tasks`` gloo processes; a cached
    record serves only if it passed with as many processes and at least ``iters`` iterations."""
    from bench.preflight import cached, preflight_path

    out = []
    for spec in plan.runs.values():
        hit = cached(results_root, spec.run_key) if use_cache else None
        if hit and hit.get("status") == "ok" and hit.get("iters", 0) >= iters and hit.get("tasks") == tasks:
            hit["cached"] = True
        else:
            hit = run_tasks(spec, tasks, iters=iters)
            atomic_write_json(preflight_path(results_root, spec.run_key), hit)
        out.append(hit)
        if on_result:
            on_result(hit)
    return out


if __name__ == "__main__":   # one rank, started by run_tasks: SPEC_PICKLE RANK TASKS PORT OUT_JSON
    _spec, _iters, _eval, _timeout = pickle.loads(Path(sys.argv[1]).read_bytes())
    _rank_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), _spec, _iters, _eval, sys.argv[5], _timeout)
