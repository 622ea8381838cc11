"""Benchmark: render a paper-scale report of every table from 1,000 result files.

The result files are BENCHMARK FIXTURES generated here (device 'benchmark fixture', numbers = published
± seeded noise) in a temporary folder: one folder per seed, every runnable-or-not row of every table
(reference-only rows excepted), until 1,000 files exist. The report reads the first folder as its
results and the others as further seeds (``--extra-results``), so every cell is a mean over seeds and
every claim uses the seed spread as noise: the heaviest path the reporting stage has.

    .venv/bin/python benchmarks/report_render.py            # prints the timings
    .venv/bin/python benchmarks/report_render.py --record   # and writes benchmarks/report_render.txt

Then three cases, each the median of ``--runs`` (default 5) fresh processes (python start-up, imports and
recipe loading included in "process", not in "render"), all with ``workers`` = the CPU count:

* cold: a new reports folder every run (nothing cached: every page and figure drawn);
* warm: the same folder again, nothing changed;
* one result changed: one result file of one table gets another number before each run.

``--code DIR`` runs the cases against the bench package under DIR (a copy of an older tree: the "before").
``--figure-formats svg,png`` renders those figure files (default: the code's own default, SVG since 2026-12-01;
PNG + SVG before, when every figure was drawn twice).
Time it through /work/helpers/quiet.sh (it pauses the background sweep and prints the load average).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

REPO = Path(__file__).resolve().parent.parent
CODE = Path(os.environ.get("BENCH_REPORT_RENDER_CODE") or REPO)  # the bench package timed (--code)
#: --figure-formats, handed to the child processes; unset: write_report's default (an older tree has no such argument)
FIGURE_FORMATS = os.environ.get("BENCH_REPORT_FIGURE_FORMATS")


def _figure_kwargs() -> dict:
    return {"figure_formats": tuple(FIGURE_FORMATS.split(","))} if FIGURE_FORMATS else {}
sys.path.insert(0, str(CODE))

from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from bench.recipes import Table
    from bench.results import Result
# bench itself is imported inside the functions: a spawned figure worker re-imports this script (multiprocessing
# runs the main module again), and `bench report`'s own main module, the console script, imports only bench.cli

N_FILES = 1000
SCALE = "paper"
DEVICE = "benchmark fixture (synthetic numbers, not a measurement)"


def fixture(table: "Table", row, seed: int, rng: random.Random) -> "Result":
    from bench.results import Measurement, Result

    measured = {}
    for col in table.metric_columns:
        pub = row.published.get(col.key)
        base = pub if pub is not None else rng.uniform(10, 50)
        measured[col.key] = round(base * (1 + rng.gauss(0, 0.02)) + rng.gauss(0, 0.3), 2)
    m = Measurement(scale=SCALE, dataset="benchmark fixture", eval_split="val2017", iterations=90000, batch_size=16,
                    gpus=8, pretrained=True, seed=seed, device=DEVICE)
    return Result(status="done", table=table.name, row=row.id, label=row.label, run_key=f"bench-{row.id}-{seed}",
                  config_hash="benchfixture", measured=measured, measurement=m, git_commit="benchmark-fixture",
                  finished_at=f"2026-01-01T00:00:{seed:02d}+00:00")


def generate(tables: list["Table"], root: Path) -> list[Path]:
    """Seed folders root/seed-<n>/ with N_FILES result files in all; returns the folders."""
    from bench.results import result_path, write_result

    rng = random.Random(0)
    rows = [(t, r) for t in tables for r in t.rows if r.reference_only is None]
    folders, written, seed = [], 0, 0
    while written < N_FILES:
        folder = root / f"seed-{seed}"
        folders.append(folder)
        for table, row in rows:
            if written == N_FILES:
                break
            write_result(result_path(folder, SCALE, table.name, row.id), fixture(table, row, seed, rng))
            written += 1
        seed += 1
    return folders


def _cpu() -> float:
    """CPU seconds of this process and its finished children (figure workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _reap() -> None:
    """Wait for the figure workers a render let go (it does not wait for them to exit), so their CPU time
    is counted with the render that used them."""
    import multiprocessing

    for proc in multiprocessing.active_children():
        proc.join()


def timed(label: str, fn, timings: dict[str, tuple[float, float]]):
    """Run ``fn``; record (wall seconds, CPU seconds): the machine may be shared, CPU time is steadier.
    The wall is ``fn``'s own; the CPU includes its workers' (reaped after the wall is taken)."""
    t0, c0 = time.perf_counter(), _cpu()
    out = fn()
    wall = time.perf_counter() - t0
    _reap()
    timings[label] = (wall, _cpu() - c0)
    return out


def reference_loop() -> float:
    """CPU seconds of a fixed pure-Python loop (10^7 additions), the median of 3: how fast this machine ran
    at the time (a shared VM's speed drifts by a quarter from one minute to the next)."""
    times = []
    for _ in range(3):
        c0, s = time.process_time(), 0
        for i in range(10_000_000):
            s += i
        times.append(time.process_time() - c0)
    return statistics.median(times)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CHANGED = ("csr-d2s/table-ii", "baseline-fpn")   # the result file the "one result changed" case edits


def child(out: str, results: str) -> None:
    """One render in this fresh process; prints {"render": s, "process": s} as JSON."""
    from bench.recipes import Catalogue
    from bench.report.build import write_report

    cat = Catalogue()
    tables = cat.tables()
    folders = sorted(Path(results).glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
    t0 = time.perf_counter()
    report = write_report(tables, SCALE, folders[0], Path(out), catalogue=cat, extra_roots=folders[1:],
                          workers=os.cpu_count() or 1, **_figure_kwargs())
    render = time.perf_counter() - t0
    print(json.dumps({"render": render, "process": time.perf_counter() - START, "pages": len(report.pages),
                      "figures": len(report.figures)}))


def change_one(results: Path, k: int) -> None:
    """Give one result file of CHANGED another measured number (k-th change)."""
    table, row = CHANGED
    from bench.results import result_path

    path = result_path(results / "seed-0", SCALE, table, row)
    data = json.loads(path.read_text())
    key = sorted(data["measured"])[0]
    data["measured"][key] = round(float(data["measured"][key]) + 0.1 * (k + 1), 2)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def cases(results: Path, work: Path, runs: int) -> dict[str, list[dict]]:
    env = dict(os.environ, BENCH_REPORT_RENDER_CODE=str(CODE))
    argv = [sys.executable, str(Path(__file__).resolve()), "--child"]

    def one(out: Path) -> dict:
        proc = subprocess.run(argv + [str(out), str(results)], env=env, capture_output=True, text=True, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    got: dict[str, list[dict]] = {"cold": [], "warm": [], "one result changed": []}
    for i in range(runs):
        got["cold"].append(one(work / f"cold-{i}"))
        shutil.rmtree(work / f"cold-{i}", ignore_errors=True)
    one(work / "kept")  # the warm folder's first (cold) render, not counted
    for i in range(runs):
        got["warm"].append(one(work / "kept"))
    for i in range(runs):
        change_one(results, i)
        got["one result changed"].append(one(work / "kept"))
    return got


START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write benchmarks/report_render.txt")
    parser.add_argument("--runs", type=int, default=5, help="runs per case (median reported)")
    parser.add_argument("--label", default="", help="what is timed, e.g. 'before (commit abc)' (printed)")
    parser.add_argument("--before", type=Path, default=None,
                        help="with --record: an earlier run's printed output, kept in the txt as the 'before'")
    parser.add_argument("--figure-formats", default=None,
                        help="comma-separated figure formats (svg, png, pdf); default: the timed code's default")
    parser.add_argument("--child", nargs=2, metavar=("OUT", "RESULTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    global FIGURE_FORMATS
    if args.figure_formats:
        FIGURE_FORMATS = os.environ["BENCH_REPORT_FIGURE_FORMATS"] = args.figure_formats

    from bench.recipes import Catalogue
    from bench.report.build import write_report

    load = os.getloadavg()
    ref_before = reference_loop()
    work = Path(tempfile.mkdtemp(prefix="bench-report-bench-"))
    timings: dict[str, tuple[float, float]] = {}
    try:
        cat = Catalogue()
        tables = timed("load recipes", cat.tables, timings)
        folders = timed("generate fixtures (not part of the render)", lambda: generate(tables, work / "results"),
                        timings)
        n_files = sum(1 for f in folders for _ in f.glob(f"{SCALE}/*/*/*.json"))
        report = timed(f"render: pages + figures + exports ({os.cpu_count()} figure workers)", lambda: write_report(
            tables, SCALE, folders[0], work / "reports", catalogue=cat, extra_roots=folders[1:],
            workers=os.cpu_count() or 1, **_figure_kwargs()), timings)
        timed("render: pages + figures + exports (1 process)", lambda: write_report(
            tables, SCALE, folders[0], work / "reports-serial", catalogue=cat, extra_roots=folders[1:], workers=1,
            **_figure_kwargs()), timings)
        timed("render again: exports only (--format csv md latex)", lambda: write_report(
            tables, SCALE, folders[0], work / "reports-exports", catalogue=cat, html=False,
            extra_roots=folders[1:]), timings)
        figures = len(report.figures)
        claims = sum(len(v.claims) for v in report.views)
        rows = sum(len(v.rows) for v in report.views)
        got = cases(work / "results", work / "cases", args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref_after = reference_loop()

    lines = [
        "bench report render benchmark (benchmarks/report_render.py)" + (f": {args.label}" if args.label else ""),
        f"code timed: {CODE}",
        f"input: {n_files} result files (benchmark fixtures, {len(folders)} seed folders), {len(tables)} tables, "
        f"{rows} rows, {claims} claim rows; output: {len(report.pages)} pages, {figures} figure files"
        f" ({FIGURE_FORMATS or 'the default formats'})",
        f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average before the run: {load[0]:.1f} (a shared machine inflates wall times, not CPU times)",
        f"machine speed: a 10^7-addition Python loop took {ref_before:.3f} s before the runs, {ref_after:.3f} s after "
        "(the same code: a slower loop means a slower machine, not slower bench)",
        "",
        f"{'step':<58} {'wall':>8} {'CPU':>8}",
    ]
    lines += [f"{label:<58} {wall:7.2f}s {cpu:7.2f}s" for label, (wall, cpu) in timings.items()]
    lines += ["", f"cases: median of {args.runs} fresh processes each ({os.cpu_count()} figure workers); render = "
              "write_report's wall, process = the whole process (start-up, imports, recipes, render)",
              f"{'case':<24} {'render median':>14} {'process median':>15}  render runs"]
    for case, runs in got.items():
        renders = [r["render"] for r in runs]
        lines.append(f"{case:<24} {statistics.median(renders):13.2f}s {statistics.median(r['process'] for r in runs):14.2f}s"
                     f"  {' '.join(f'{x:.2f}' for x in renders)}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.record:
        before = args.before.read_text() if args.before else ""
        sep = "\n" + "-" * 100 + "\n"
        (REPO / "benchmarks" / "report_render.txt").write_text(text + (sep + before if before else ""))


if __name__ == "__main__":
    main()
