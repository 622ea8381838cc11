"""Per-table smoke-scale estimates, as `bench run TABLE --dry-run` computes them on an empty results folder
(each table planned alone, so a model shared by two tables counts in both).

    .venv/bin/python benchmarks/smoke_estimates.py [--scale smoke|FILE.yaml] [--costs FILE.yaml]

``--costs``: a rates file other than the shipped bench/scales/costs/<scale>.yaml (e.g. a copy of it from
before a recalibration, to print the 'before' column of benchmarks/smoke_costs.txt).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="smoke")
    ap.add_argument("--costs", type=Path, default=None)
    args = ap.parse_args()
    import bench.cost as cost
    from bench.plan import make_plan
    from bench.recipes import Catalogue

    if args.costs:
        doc = yaml.safe_load(args.costs.read_text()) or {}
        cost.calibration = lambda name: doc   # noqa: E731 - the one rates file this estimate reads
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for table in Catalogue().tables():
            plan = make_plan([(table, list(table.rows))], args.scale, Path(tmp) / "results")
            runs = {pr.run_key: pr.est_minutes for pr in plan.rows
                    if pr.run_key in plan.runs and pr.est_minutes is not None}
            total += sum(runs.values())
            print(f"  {table.name:26} {len(runs):3d} runs  {sum(runs.values()):7.0f} min")
    print(f"  {'all tables':26}           {total:7.0f} min = {total / 60:.1f} h")


if __name__ == "__main__":
    main()
