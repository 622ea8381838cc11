"""Preflight every runnable row of every table (or of the tables named) on the real-format fixtures,
on this machine, and record per run: status, reason, s/iteration and peak memory.

    .venv/bin/python benchmarks/preflight_all.py [TABLE ...] [--iters 1] [--work DIR] [--out FILE]

The fixtures are bench's COCO 2017 and converted-Cityscapes layouts (``bench data synth --layout``)
and fabricated checkpoints in the real key layout (``bench.data.fake_weights``: random tensors, so
losses and metrics mean nothing; what is checked is that each run starts, loads, trains and evaluates).
Each table runs as its own ``bench preflight TABLE --json`` process, so a crash or a memory blow-up in
one table cannot take the others down. Records are cached by run key under ``WORK/results``: a rerun
(after an interruption) only does what is missing. The summary goes to ``--out`` (default
benchmarks/preflight_all.txt) with the command and the machine.
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


def fixtures(work: Path) -> dict[str, Path]:
    from bench.data.layouts import write_coco, write_cityscapes

    roots = {"coco": work / "coco", "cityscapes": work / "cityscapes"}
    if not (roots["coco"] / "manifest.json").exists():
        write_coco(roots["coco"], train_images=8, val_images=4, test_images=2)
    if not (roots["cityscapes"] / "manifest.json").exists():
        write_cityscapes(roots["cityscapes"], train_images=4, val_images=2)
    return roots


def fabricate_all(tables: list[str], roots: dict[str, Path], weights: Path) -> list[str]:
    """Fabricate every checkpoint the tables' paper-scale plans load (once per file name)."""
    from bench.data.fake_weights import fabricate
    from bench.plan import make_plan
    from bench.recipes import Catalogue

    cat = Catalogue()
    made: list[str] = []
    weights.mkdir(parents=True, exist_ok=True)
    for name in tables:
        t = cat.load(name)
        plan = make_plan([(t, list(t.rows))], "paper", weights.parent / "plan-results", data_root=roots, force=True,
                         weights_dirs=[weights])
        for spec in plan.runs.values():
            need = {w["file_name"] for w in spec.weights if not w["found"]} - {p.name for p in weights.iterdir()}
            if need:
                made += [p.name for p in fabricate(spec.config, weights, only=need)]
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="*")
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache/bench"))
                    / "preflight-all")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "preflight_all.txt")
    ap.add_argument("--note", default="", help="a line recorded with the output (e.g. what else ran on the machine)")
    ap.add_argument("--breadth", action="store_true",
                    help="first preflight one runnable row of every table, then the rest (a partial sweep then "
                         "covers every table)")
    args = ap.parse_args()
    from bench.recipes import Catalogue

    tables = args.tables or Catalogue().names()
    roots = fixtures(args.work)
    weights = args.work / "weights"
    t0 = time.time()
    made = fabricate_all(tables, roots, weights)
    print(f"fixtures in {args.work}; fabricated {len(made)} checkpoint(s): {', '.join(made) or 'none new'}", flush=True)
    env = dict(os.environ, BENCH_RESULTS=str(args.work / "results"))
    passes: list[tuple[str, list[str]]] = []
    if args.breadth:
        from bench.rowstatus import safe_row_status
        from bench.vocab import RowStatus

        cat = Catalogue()
        for name in tables:
            first = next((r.id for r in cat.load(name).rows if safe_row_status(r)[0] is RowStatus.RUNNABLE), None)
            if first:
                passes.append((name, ["--row", first]))
    passes += [(name, []) for name in tables]
    by_table: dict[str, list[dict]] = {}
    for name, extra in passes:
        t = time.time()
        cmd = [str(REPO / ".venv" / "bin" / "bench"), "preflight", name, *extra, "--data-root", f"coco={roots['coco']}",
               "--data-root", f"cityscapes={roots['cityscapes']}", "--weights-dir", str(weights),
               "--iters", str(args.iters), "--json", "--cached"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        try:
            recs = json.loads(proc.stdout)
        except ValueError:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            recs = [{"table": name, "row": "*", "status": "crashed", "reason": f"exit {proc.returncode}: {tail}"}]
        by_table[name] = recs  # the full pass of a table replaces its first-row pass
        ok = sum(r["status"] == "ok" for r in recs)
        print(f"{name}{' ' + extra[1] if extra else ''}: {ok}/{len(recs)} ok in {time.time() - t:.0f} s", flush=True)
        records = [r for recs_ in by_table.values() for r in recs_]
        write_summary(args, tables, records, time.time() - t0)  # after each table: an interrupted sweep keeps its summary


def write_summary(args, tables, records, wall) -> None:
    from bench.job import cpu_model

    lines = [f"# {' '.join(['.venv/bin/python', 'benchmarks/preflight_all.py', *args.tables, '--iters', str(args.iters)] + (['--breadth'] if args.breadth else []))}",
             f"# machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; wall {wall / 60:.1f} min "
             "(cached records are not re-run: their times are from when they ran)",
             f"# tables: {len(tables)}; runs: {len(records)}; "
             + ", ".join(f"{s} {sum(r['status'] == s for r in records)}"
                         for s in sorted({r['status'] for r in records}))]
    lines += [f"# note: {args.note}"] if args.note else []
    lines += [f"# load average when written: {os.getloadavg()[0]:.1f}", ""]
    lines.append(f"{'status':12s} {'s/it':>7s} {'peak MB':>8s} {'train inst':>10s} {'eval inst':>9s}  rows / reason")
    for r in records:
        spi = f"{r['s_per_iter']:.1f}" if r.get("s_per_iter") else "-"
        mem = f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") else "-"
        rows = ", ".join(r.get("rows") or [f"{r['table']}/{r['row']}"])
        reason = f"  <- {r['reason']}" if r.get("reason") else ""
        lines.append(f"{r['status']:12s} {spi:>7s} {mem:>8s} {str(r.get('train_instances', '-')):>10s} "
                     f"{str(r.get('eval_instances', '-')):>9s}  {rows}{reason}")
    timed = sorted((r for r in records if r.get("s_per_iter")), key=lambda r: -r["s_per_iter"])
    lines += ["", "slowest runs (s/iteration, peak MB):"]
    lines += [f"  {r['s_per_iter']:7.1f} {r.get('peak_mem_mb') or 0:8.0f}  {', '.join(r['rows'])}" for r in timed[:10]]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
