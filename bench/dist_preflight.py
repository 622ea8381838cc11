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


def with_task_batch(spec: RunSpec, batch_per_task: Optional[int]) -> tuple[RunSpec, Optional[dict]]:
    """``spec`` with each process's training batch set to ``batch_per_task`` (a copy), and the record of
    the change; ``spec`` itself and None when no batch is asked or it is the planned one."""
    planned = (spec.config.get("train_dataloader") or {}).get("batch_size")
    if not batch_per_task or batch_per_task == planned:
        return spec, None
    spec = copy.deepcopy(spec)
    spec.config["train_dataloader"]["batch_size"] = batch_per_task
    return spec, {"planned": planned, "used": batch_per_task,
                  "why": f"--batch-per-task {batch_per_task}: each process trains on {batch_per_task} image(s) per "
                         f"iteration instead of the planned {planned}; the iteration's memory and time are not the "
                         "planned run's"}


def _kill_reason(code: Optional[int]) -> str:
    if code is None:
        return "stopped after another rank failed or the timeout"
    if code < 0:
        sig = -code
        return f"killed by signal {sig}" + (" (SIGKILL: the kernel's out-of-memory killer sends it; see "
                                            "--batch-per-task)" if sig == 9 else "")
    return f"exited with status {code}"


def run_tasks(spec: RunSpec, tasks: int, iters: int = 2, eval_images: Optional[int] = None,
              timeout_s: int = 1800, batch_per_task: Optional[int] = None,
              keep_logs: Optional[Path] = None) -> dict:
    """Preflight one run in ``tasks`` gloo processes; the record is rank 0's, failed if any rank failed,
    with every rank's status, s/iteration, peak memory and losses under ``ranks``. ``batch_per_task``
    overrides each process's training batch (recorded as ``batch_override``); a failed run's rank logs
    are copied to ``keep_logs``/rank<r>.log and named in the reason."""
    from bench.preflight import EVAL_IMAGES

    eval_images = EVAL_IMAGES if eval_images is None else eval_images
    spec, override = with_task_batch(spec, batch_per_task)
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
                why = _kill_reason(p.returncode if p.returncode != 0 else None)
                ranks.append({"rank": r, "status": "failed", "reason": f"no record: {why}"})
        if keep_logs is not None and any(r.get("status") != "ok" for r in ranks):
            keep_logs.mkdir(parents=True, exist_ok=True)
            for r in range(tasks):
                dest = keep_logs / f"rank{r}.log"
                dest.write_bytes((Path(tmp) / f"rank{r}.log").read_bytes())
                ranks[r]["log"] = str(dest)
                if ranks[r].get("status") != "ok":
                    ranks[r]["reason"] = f"{ranks[r].get('reason') or 'failed'} (log: {dest})"
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
                                           "losses", "grad_params", "eval_detections", "eval_processed")} for r in ranks]
    if override:
        rec["batch_override"] = override
        rec["batch_per_gpu"] = override["used"]
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    rec["finished_at"] = time.time()
    return rec


def _failed(out: str) -> bool:
    try:
        return json.loads(Path(out).read_text()).get("status") != "ok"
    except (OSError, ValueError):
        return False


def preflight_plan_tasks(plan: Plan, results_root: Path, tasks: int, iters: int = 2, use_cache: bool = False,
                         on_result=None, batch_per_task: Optional[int] = None) -> list[dict]:
    """:func:`bench.preflight.preflight_plan` with every run in ``tasks`` gloo processes; a cached
    record serves only if it passed with as many processes, at least ``iters`` iterations and the same
    per-process batch."""
    from bench.preflight import cached, preflight_path

    out = []
    for spec in plan.runs.values():
        hit = cached(results_root, spec.run_key) if use_cache else None
        same_batch = (hit or {}).get("batch_override", {}).get("used") == (
            batch_per_task if with_task_batch(spec, batch_per_task)[1] else None)
        if hit and hit.get("status") == "ok" and hit.get("iters", 0) >= iters and hit.get("tasks") == tasks and same_batch:
            hit["cached"] = True
        else:
            logs = preflight_path(results_root, spec.run_key).with_suffix(".logs")
            hit = run_tasks(spec, tasks, iters=iters, batch_per_task=batch_per_task, keep_logs=logs)
            atomic_write_json(preflight_path(results_root, spec.run_key), hit)
        out.append(hit)
        if on_result:
            on_result(hit)
    return out


if __name__ == "__main__":   # one rank, started by run_tasks: SPEC_PICKLE RANK TASKS PORT OUT_JSON
    _spec, _iters, _eval, _timeout = pickle.loads(Path(sys.argv[1]).read_bytes())
    _rank_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), _spec, _iters, _eval, sys.argv[5], _timeout)
