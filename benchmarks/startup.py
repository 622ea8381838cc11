"""Start-up time of the light commands, as a user runs them (a new process each time), warm and cold.

    .venv/bin/python benchmarks/startup.py [--before REV] [--runs 7] [--out benchmarks/startup.txt]

warm: the cache folder already holds what the command caches (one untimed run first); cold: a new,
empty cache folder ($BENCH_CACHE) for every run, as on a fresh checkout. ``--before REV`` also times
the code of commit REV (checked out into a temporary git worktree, run with this checkout's .venv)
for the before/after comparison. Each figure is the median of ``--runs`` runs; all are listed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = REPO / ".venv" / "bin" / "python"
COMMANDS = [["--help"], ["list"], ["show", "csr-d2s/table-ii"], ["validate"], ["status", "csr-d2s/table-ii"]]


#: the console script's work, with the code imported from ``root`` (the .venv's editable-install finder,
#: which maps `bench` to this checkout, is taken off so a worktree of another commit can be timed)
LAUNCH = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
          "sys.path.insert(0, {root!r}); from bench.cli import main; main()")


def timed(code_root: Path, args: list[str], cache: Path, results: Path) -> float:
    env = dict(os.environ, BENCH_CACHE=str(cache), BENCH_RESULTS=str(results), BENCH_RECIPES=str(REPO / "recipes"))
    t = time.perf_counter()
    subprocess.run([str(PY), "-c", LAUNCH.format(root=str(code_root)), *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def measure(code_root: Path, runs: int, work: Path) -> dict[tuple[str, str], list[float]]:
    out = {}
    results = work / "results"
    for args in COMMANDS:
        name = " ".join(args)
        warm_cache = work / "warm-cache"
        timed(code_root, args, warm_cache, results)  # fills the cache: not timed
        out[(name, "warm")] = [timed(code_root, args, warm_cache, results) for _ in range(runs)]
        cold = []
        for i in range(runs):
            cold.append(timed(code_root, args, work / f"cold-{name.replace(' ', '_').replace('/', '_')}-{i}", results))
        out[(name, "cold")] = cold
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="a commit to time as 'before'")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "startup.txt")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    sets: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if args.before:
            wt = d / "before"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(wt), args.before], check=True,
                           capture_output=True)
            try:
                sets[f"before ({args.before})"] = measure(wt, args.runs, d / "b")
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(wt)], capture_output=True)
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        sets[f"after ({head})"] = measure(REPO, args.runs, d / "a")
    from bench.job import cpu_model

    lines = [f"# {' '.join(['.venv/bin/python', 'benchmarks/startup.py'] + sys.argv[1:])}",
             f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_model()}, {os.cpu_count()} cores; "
             f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after; median of {args.runs} runs (s)",
             "# targets (issue 14): list < 0.3 s and show < 0.5 s warm; cold (new cache folder) < 3 s", ""]
    header = f"{'command':28s} {'cache':5s} " + " ".join(f"{k:>22s}" for k in sets)
    lines.append(header)
    for cmd in COMMANDS:
        name = " ".join(cmd)
        for kind in ("warm", "cold"):
            cells = [f"{statistics.median(s[(name, kind)]):22.2f}" for s in sets.values()]
            lines.append(f"{'bench ' + name:28s} {kind:5s} " + " ".join(cells))
    lines += ["", "all runs:"]
    for label, s in sets.items():
        for (name, kind), values in s.items():
            lines.append(f"  {label:20s} bench {name:26s} {kind}: " + ", ".join(f"{v:.2f}" for v in values))
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: 5 + 2 * len(COMMANDS)]))


if __name__ == "__main__":
    main()
