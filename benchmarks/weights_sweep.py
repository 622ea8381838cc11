"""Load every checkpoint of every runnable row's paper-scale config the way a job does, from fabricated files in
the checkpoints' real key layouts (bench/data/checkpoint_layouts/), and judge each load (bench.loadcheck).

    .venv/bin/python benchmarks/weights_sweep.py [TABLE ...] [--work DIR] [--out FILE]

Per run: preflight's data and weights phases (``bench.preflight.run_one(stop_after="weights")``: the datasets
counted on the real-format fixtures, the model built, ``init_weights()`` recorded); no training. The summary
(``--out``, default benchmarks/weights_sweep.txt) lists per checkpoint file the runs that load it, the fraction
of the target's parameters loaded and what was declared new, and every failing run with its reason.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="*")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache/bench"))
                    / "weights-sweep")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "weights_sweep.txt")
    args = ap.parse_args()

    from bench.data.fake_weights import fabricate
    from bench.data.layouts import write_cityscapes, write_coco
    from bench.plan import make_plan
    from bench.preflight import run_one
    from bench.recipes import Catalogue
    from bench.weights import localize

    roots = {"coco": args.work / "coco", "cityscapes": args.work / "cityscapes"}
    if not (roots["coco"] / "manifest.json").exists():
        write_coco(roots["coco"], train_images=4, val_images=2, test_images=2)
    if not (roots["cityscapes"] / "manifest.json").exists():
        write_cityscapes(roots["cityscapes"], train_images=2, val_images=2)
    weights = args.work / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    cat = Catalogue()
    tables = args.tables or cat.names()
    t0 = time.time()
    per_file: dict[str, list] = defaultdict(list)
    failed: list[tuple[str, str]] = []
    seen: set[str] = set()
    n_runs = 0
    for name in tables:
        t = cat.load(name)
        plan = make_plan([(t, list(t.rows))], "paper", args.work / "results", data_root=roots, force=True,
                         weights_dirs=[weights])
        for spec in plan.runs.values():
            if spec.run_key in seen:
                continue
            seen.add(spec.run_key)
            need = {w["file_name"] for w in spec.weights if not w["found"]} - {p.name for p in weights.iterdir()}
            if need:
                fabricate(spec.config, weights, only=need)
            spec.weights = [w.as_dict() for w in localize(spec.config, [weights])]
            rec = run_one(spec, stop_after="weights")
            n_runs += 1
            rows = ", ".join(rec.rows)
            if rec.status != "ok":
                failed.append((rows, rec.reason))
            for w in rec.weights:
                per_file[w["file_name"]].append((rows, w.get("loaded_fraction"), w.get("declared_new") or [],
                                                 len(w.get("unexpected_head") or []), w.get("ok")))
            print(f"{rec.status:6s} {rows}" + (f"  <- {rec.reason[:200]}" if rec.status != "ok" else ""), flush=True)

    from bench.job import cpu_model

    lines = [f"# {' '.join(['.venv/bin/python', 'benchmarks/weights_sweep.py', *args.tables])}",
             f"# machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall {(time.time() - t0) / 60:.1f} min",
             f"# tables: {len(tables)}; distinct runs: {n_runs}; failed: {len(failed)}",
             "# fabricated files written from bench/data/checkpoint_layouts/ (the real files' key layouts), loaded by",
             "# init_weights() into the paper-scale model and judged by bench.loadcheck (no training)", ""]
    for f in sorted(per_file):
        uses = per_file[f]
        fracs = sorted({u[1] for u in uses if u[1] is not None})
        ok = sum(bool(u[4]) for u in uses)
        lines.append(f"{f}: {ok}/{len(uses)} runs load every non-declared parameter; loaded fraction "
                     + (f"{fracs[0]:.4f}" if len(fracs) == 1 else f"{fracs[0]:.4f}..{fracs[-1]:.4f}" if fracs else "-"))
        decl = defaultdict(set)
        for u in uses:
            for d in u[2]:
                decl[d["why"]].add(d["count"])
        for why, counts in decl.items():
            lines.append(f"    declared new ({'/'.join(map(str, sorted(counts)))} tensors): {why}")
        heads = {u[3] for u in uses}
        if heads - {0}:
            lines.append(f"    left over as expected: a classifier head ({'/'.join(map(str, sorted(heads)))} tensors)")
    if failed:
        lines += ["", "failed runs:"] + [f"  {rows}: {why}" for rows, why in failed]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
