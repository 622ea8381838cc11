"""`bench preflight --tasks 2` on paper configs: one Mask R-CNN row and one SparseInst row, each in 2 gloo
processes on this machine, on the real-format COCO fixture (bench.data.layouts) with checkpoints fabricated
in their real key layouts, 1 training iteration, the evaluation gathered from both ranks.

    .venv/bin/python benchmarks/preflight_tasks.py [--work DIR] [--out FILE]

Each preflight runs through the CLI as a user types it; the summary (``--out``, default
benchmarks/preflight_tasks.txt) gives per run: status, per-rank s/iteration, peak memory and losses, the
per-process batch, what the CPU run changed in the paper config, and the wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# (table, row, --batch-per-task): the SparseInst row's planned share of its 64-image batch (32 per process, its
# config's infinite sampler fills every batch): the two processes were OOM-killed at ~12 GB each (23 GiB here)
ROWS = [("sbr-cnn/table-2", "mask-1x", None), ("amf-sparseinst/table-10", "amf-sparseinst-r50d-dcn-608", 2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache/bench"))
                    / "preflight-tasks")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "preflight_tasks.txt")
    ap.add_argument("--tasks", type=int, default=2)
    args = ap.parse_args()

    from bench.data.fake_weights import fabricate
    from bench.data.layouts import write_coco
    from bench.plan import make_plan
    from bench.recipes import Catalogue

    coco, weights, results = args.work / "coco", args.work / "weights", args.work / "results"
    if not (coco / "annotations").exists():
        write_coco(coco, train_images=4, val_images=2, test_images=2)
    weights.mkdir(parents=True, exist_ok=True)
    cat = Catalogue()
    lines = [f"# bench preflight --tasks {args.tasks} --iters 1, real-format COCO fixture (4 train / 2 val images), "
             f"fabricated layout-true checkpoints", f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{platform.node()}, {os.cpu_count()} cores, python {platform.python_version()}", ""]
    bad = 0
    for table, row, batch in ROWS:
        t = cat.load(table)
        plan = make_plan([(t, [t.row(row)])], "paper", results, data_root={"coco": coco}, force=True,
                         weights_dirs=[weights], tasks=args.tasks)
        for spec in plan.runs.values():
            need = {w["file_name"] for w in spec.weights if not w["found"]} - {p.name for p in weights.iterdir()}
            if need:
                fabricate(spec.config, weights, only=need)
        cmd = [str(Path(sys.executable).with_name("bench")), "preflight", table, "--row", row, "--tasks", str(args.tasks),
               "--iters", "1", "--data-root", f"coco={coco}", "--weights-dir", str(weights), "--json"] + (
            ["--batch-per-task", str(batch)] if batch else [])
        env = os.environ | {"BENCH_RESULTS": str(results)}
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        wall = time.perf_counter() - t0
        try:
            (rec,) = json.loads(p.stdout)
        except ValueError:
            rec = {"status": "failed", "reason": (p.stderr or p.stdout).strip().splitlines()[-1:]}
        bad += rec.get("status") != "ok"
        lines.append(f"{table} {row}: {rec.get('status')} (exit {p.returncode}) in {wall:.0f} s; "
                     f"{rec.get('device')}; batch per process {rec.get('batch_per_gpu')}")
        if rec.get("batch_override"):
            lines.append(f"  batch: {rec['batch_override']['why']}")
        if rec.get("reason"):
            lines.append(f"  reason: {rec['reason']}")
        for c in rec.get("cpu_changes") or []:
            lines.append(f"  changed for the CPU: {c}")
        for r in rec.get("ranks") or []:
            loss = (r.get("losses") or {}).get("loss")
            lines.append(f"  rank {r['rank']}: {r['status']}, {r.get('s_per_iter')} s/iter, peak {r.get('peak_mem_mb')} MB, "
                         f"loss {loss}, grads {r.get('grad_params')}, eval detections {r.get('eval_detections')}")
        for w in rec.get("weights") or []:
            lines.append(f"  weights {w.get('file_name')}: {w.get('loaded_fraction')} of the target's parameters loaded, "
                         f"judged {'ok' if w.get('ok') else 'NOT ok'}")
        lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
