"""Harness overhead: `bench run` of one row against mmengine's Runner on the same resolved config.

Both train the same config for the same iterations and evaluate with the same COCO metric; bench
additionally plans, counts params and FLOPs, times inference and writes the result file. The script
reports the overhead with and without those measurements (the measurements are the product; the
bookkeeping around them is the overhead).

    .venv/bin/python benchmarks/harness_overhead.py [--scale smoke] [--table pipeline-test/table-1 --row tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def direct_runner(config_py: Path, work: Path) -> float:
    """mmengine's Runner on the resolved config bench dumped: train, then test. Returns wall seconds."""
    code = f"""
import time, os
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
t0 = time.perf_counter()
from mmengine.config import Config
from mmengine.runner import Runner
from bench.resolve import register_all
register_all()
cfg = Config.fromfile({str(config_py)!r})
cfg.work_dir = {str(work / 'train')!r}
cfg.train_cfg["val_interval"] = 10**9
r = Runner.from_cfg(cfg)
r.train()
r.test()
print("WALL", time.perf_counter() - t0)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return float([ln for ln in out.stdout.splitlines() if ln.startswith("WALL")][-1].split()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="pipeline-test/table-1")
    ap.add_argument("--row", default="tiny")
    ap.add_argument("--scale", default="smoke")
    ap.add_argument("--recipes", default=str(REPO / "tests" / "data" / "recipes"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    env = dict(os.environ, BENCH_RECIPES=args.recipes, BENCH_RESULTS=str(tmp / "results"), BENCH_DATA=str(tmp / "data"))
    exe = str(Path(sys.executable).parent / "bench")
    # make the dataset first so neither side pays for it
    subprocess.run([exe, "run", args.table, args.row, "--scale", args.scale, "--dry-run"], env=env, check=True,
                   capture_output=True)
    t0 = time.perf_counter()
    p = subprocess.run([exe, "run", args.table, args.row, "--scale", args.scale, "--cluster", "inline"], env=env,
                       capture_output=True, text=True)
    bench_wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(p.stdout[-3000:] + p.stderr[-3000:])
    result = next((tmp / "results").rglob(f"{args.row}.json"))
    res = json.loads(result.read_text())
    work = tmp / "direct"
    work.mkdir()
    direct = direct_runner(Path(res["work_dir"]) / "config.py", work)
    job_wall = res["wall_s"]
    print(f"table/row: {args.table}/{args.row} at {args.scale} scale, {res['measurement']['iterations']} iterations, "
          f"device {res['measurement']['device']}")
    print(f"mmengine Runner directly (train + test):           {direct:8.1f} s")
    print(f"bench job body (train + test + params/FLOPs/FPS):  {job_wall:8.1f} s  ({(job_wall / direct - 1) * 100:+.1f}%)")
    print(f"bench run, whole command (plan, launch, write):    {bench_wall:8.1f} s  ({(bench_wall / direct - 1) * 100:+.1f}%)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
