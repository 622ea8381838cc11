"""Benchmark: draw every figure of the 1,000-result-file report (benchmarks/report_render.py's fixtures) in
this one process, without pages, audits or caches: what matplotlib alone costs.

    .venv/bin/python benchmarks/figure_draw.py [--formats svg,png] [--repeats 3]

Prints wall and CPU seconds per repeat. Time it through /work/helpers/quiet.sh on a shared machine.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="svg", help="comma-separated: svg (the report's default), png, pdf")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import report_render as rr

    from bench.recipes import Catalogue
    from bench.report import plots
    from bench.report.build import baseline_tables, build_table_view, gather

    cat = Catalogue()
    tables = cat.tables()
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "results"
        rr.generate(tables, res)
        folders = sorted(res.glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
        g = gather(list(tables) + baseline_tables(tables, cat), rr.SCALE, folders[0], folders[1:])
        datas = [plots.plot_data(build_table_view(t, g, cat)) for t in tables]
        formats = tuple(args.formats.split(","))
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            n = sum(len(p.files) for i, d in enumerate(datas) for p in plots.write_plots(d, Path(tmp) / "out" / str(i),
                                                                                     formats=formats))
            print(f"{args.formats}: {n} files, wall {time.perf_counter() - t0:.2f} s, CPU {time.process_time() - c0:.2f} s",
                  flush=True)


if __name__ == "__main__":
    main()
