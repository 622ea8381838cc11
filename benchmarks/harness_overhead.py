"""Harness overhead: `bench run` of one row against mmengine's Runner on the same resolved config.

Both sides train the same config for the same iterations and evaluate it with the same COCO metric.
bench additionally plans, launches the job through the executor (submitit's LocalExecutor by default),
counts params and FLOPs, times inference and writes the result files. The two sides are run
alternately (ABAB..., the order flipped every pair) so that drift of the machine hits both; the
script reports medians, the spread, and where bench's extra time goes (the job's phase timings).

    .venv/bin/python benchmarks/harness_overhead.py [--table pipeline-test/table-1 --row tiny]
        [--recipes tests/data/recipes] [--scale smoke] [--repeats 3] [--cluster local]

Run it on an otherwise idle machine: both sides are CPU-bound and any other load dominates the
difference being measured.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

DIRECT = """
import time, os, json, sys
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
t0 = time.perf_counter()
from mmengine.config import Config
from mmengine.runner import Runner
from bench.resolve import register_all
register_all()
cfg = Config.fromfile(sys.argv[1])
cfg.work_dir = sys.argv[2]
cfg.train_cfg["val_interval"] = 10**9
r = Runner.from_cfg(cfg)
t1 = time.perf_counter()
r.train()
t2 = time.perf_counter()
r.test()
t3 = time.perf_counter()
print("PHASES", json.dumps({"setup": t1 - t0, "train": t2 - t1, "test": t3 - t2}))
"""


def direct_runner(config_py: Path, work: Path) -> tuple[float, dict]:
    """mmengine's Runner on the config bench dumped: train, then test, in a fresh Python process.
    Returns the process's wall seconds (interpreter start included, as for the bench command)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", DIRECT, str(config_py), str(work)], capture_output=True,
                         text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    phases = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("PHASES")][-1].split(" ", 1)[1])
    return wall, phases


def bench_command(exe: str, args, env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    p = subprocess.run([exe, "run", args.table, args.row, "--scale", args.scale, "--cluster", args.cluster],
                       env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(p.stdout[-3000:] + p.stderr[-3000:])
    result = next(Path(env["BENCH_RESULTS"]).rglob(f"{args.row}.json"))
    return wall, json.loads(result.read_text())


def pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="pipeline-test/table-1")
    ap.add_argument("--row", default="tiny")
    ap.add_argument("--scale", default="smoke")
    ap.add_argument("--recipes", default=str(REPO / "tests" / "data" / "recipes"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cluster", default="local", choices=["local", "inline"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    exe = str(Path(sys.executable).parent / "bench")
    base_env = dict(os.environ, BENCH_RECIPES=args.recipes, BENCH_DATA=str(tmp / "data"))
    # the dataset and the config cache first, so that neither side pays for them
    subprocess.run([exe, "run", args.table, args.row, "--scale", args.scale, "--dry-run"],
                   env=base_env | {"BENCH_RESULTS": str(tmp / "dry")}, check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", "import mmdet.models, mmcv.ops"], check=True, capture_output=True)

    config_py = None
    direct: list[tuple[float, dict]] = []
    bench: list[tuple[float, dict]] = []
    for i in range(args.repeats):
        env = base_env | {"BENCH_RESULTS": str(tmp / f"results-{i}")}
        order = ["bench", "direct"] if i % 2 == 0 else ["direct", "bench"]
        if config_py is None:
            order = ["bench", "direct"]  # the direct side needs the config bench dumps
        for side in order:
            if side == "bench":
                bench.append(bench_command(exe, args, env))
                config_py = config_py or Path(bench[-1][1]["work_dir"]) / "config.py"
                print(f"  repeat {i + 1}: bench  {bench[-1][0]:7.1f} s", file=sys.stderr)
            else:
                direct.append(direct_runner(config_py, tmp / f"direct-{i}"))
                print(f"  repeat {i + 1}: direct {direct[-1][0]:7.1f} s", file=sys.stderr)
            shutil.rmtree(tmp / f"direct-{i}", ignore_errors=True)

    res = bench[0][1]
    m = res["measurement"]
    d_wall = [w for w, _ in direct]
    b_wall = [w for w, _ in bench]
    j_wall = [r["wall_s"] for _, r in bench]
    med = statistics.median
    print(f"table/row: {args.table}/{args.row} at {args.scale} scale, {m['iterations']} iterations, "
          f"device {m['device']}, executor {args.cluster}, {args.repeats} alternating repeats")
    print(f"speed protocol: {m['speed_protocol']}")
    print(f"{'':52s} {'median':>8s} {'min':>8s} {'max':>8s}")
    print(f"{'mmengine Runner directly (process: train + test)':52s} {med(d_wall):8.1f} {min(d_wall):8.1f} {max(d_wall):8.1f}")
    print(f"{'bench job body (train + test + params/FLOPs/FPS)':52s} {med(j_wall):8.1f} {min(j_wall):8.1f} "
          f"{max(j_wall):8.1f}  ({pct(med(j_wall), med(d_wall))})")
    print(f"{'bench run, whole command (plan, launch, write)':52s} {med(b_wall):8.1f} {min(b_wall):8.1f} "
          f"{max(b_wall):8.1f}  ({pct(med(b_wall), med(d_wall))})")
    pairs = [b / d - 1 for b, d in zip(b_wall, d_wall)]
    print(f"whole command vs direct, per repeat: " + ", ".join(f"{p * 100:+.1f}%" for p in pairs))
    print("phases (median s):        setup   train    test  measure")
    dp = {k: med([p[k] for _, p in direct]) for k in ("setup", "train", "test")}
    bp = {k: med([r["measurement"].get("phases_s", {}).get(k, float("nan")) for _, r in bench])
          for k in ("setup", "train", "test", "measure")}
    print(f"  direct                  {dp['setup']:6.1f}  {dp['train']:6.1f}  {dp['test']:6.1f}       -")
    print(f"  bench job               {bp['setup']:6.1f}  {bp['train']:6.1f}  {bp['test']:6.1f}  {bp['measure']:7.1f}")
    print(f"  bench outside the job (CLI, plan, executor, result files): {med(b_wall) - med(j_wall):.1f} s")
    # Both sides run the same train and test loops (same config, same seed): what differs between them
    # there is the machine's noise, whatever the harness adds lies outside them (and in its hooks).
    fixed = []
    for (bw, r), (dw, p) in zip(bench, direct):
        ph = r["measurement"].get("phases_s", {})
        fixed.append((bw - ph.get("train", 0) - ph.get("test", 0)) - (dw - p["train"] - p["test"]))
    noise = [r["measurement"]["phases_s"]["train"] / p["train"] - 1 for (_, r), (_, p) in zip(bench, direct)]
    print(f"wall outside the train and test loops, bench minus direct, per repeat: "
          + ", ".join(f"{f:+.1f} s" for f in fixed)
          + f"  -> median {med(fixed):+.1f} s = {med(fixed) / med(d_wall) * 100:+.1f}% of the direct wall")
    print("train loop, bench vs direct, per repeat (machine noise; same work): "
          + ", ".join(f"{x * 100:+.1f}%" for x in noise))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
