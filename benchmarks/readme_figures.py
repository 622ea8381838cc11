"""The README's set-up figures, measured as a new user meets them: a fresh `git clone`, the README's two
commands, then the install variants the README quotes.

    .venv/bin/python benchmarks/readme_figures.py [--skip-tests] [--out benchmarks/readme_figures.txt]

Steps (wall seconds each, in a temporary folder with ../shared beside the clone, as the guide asks):
 1. clone A, cold: `./install.sh && .venv/bin/bench run table-ii` with a new, empty $BENCH_CACHE (so
    mmcv is built from source: the first install on a fresh machine), install and run timed apart;
 2. clone A: `./install.sh --dev && .venv/bin/pytest -q` (the wheel now cached), install and tests timed
    apart, the tests' summary line kept;
 3. clone A: `./install.sh` again over the existing .venv (a re-run);
 4. clone B, cached: `./install.sh` into a new .venv with the cached wheel;
 5. clone A: `bench list` and `bench show csr-d2s/table-ii`, median of 5 (warm caches).
The clones share nothing with this checkout but the origin. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sh(cmd: str, cwd: Path, env: dict, log: Path, timeout: int = 7200) -> tuple[float, int, str]:
    t = time.perf_counter()
    with open(log, "ab") as f:
        f.write(f"\n$ {cmd}\n".encode())
        f.flush()
        proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout)
    wall = time.perf_counter() - t
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
    return wall, proc.returncode, tail[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "readme_figures.txt")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-readme-"))
    work.mkdir(parents=True, exist_ok=True)
    shared = REPO.parent / "shared"
    if shared.exists() and not (work / "shared").exists():
        (work / "shared").symlink_to(shared)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "VIRTUAL_ENV"))}
    env["BENCH_CACHE"] = str(work / "cache")  # new and empty: a fresh machine
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":") if ".venv" not in p)
    log = work / "log.txt"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    rows: list[tuple[str, float, int, str]] = []

    def step(name: str, cmd: str, cwd: Path) -> None:
        wall, rc, tail = sh(cmd, cwd, env, log)
        rows.append((name, wall, rc, tail))
        print(f"{name}: {wall:.0f} s (rc {rc}) {tail[:100]}", flush=True)

    load = os.getloadavg()[0]
    for clone in ("a", "b"):
        subprocess.run(["git", "clone", "-q", str(REPO), str(work / clone)], check=True)
    a, b = work / "a", work / "b"
    step("1. fresh clone, cold cache: ./install.sh (builds mmcv)", "./install.sh", a)
    step("1. .venv/bin/bench run table-ii (smoke, 4 rows)", ".venv/bin/bench run table-ii", a)
    step("2. ./install.sh --dev (wheel cached)", "./install.sh --dev", a)
    if not args.skip_tests:
        step("2. .venv/bin/pytest -q (the whole suite)", ".venv/bin/pytest -q", a)
    step("3. ./install.sh again over the existing .venv", "./install.sh", a)
    step("4. second fresh clone, cached wheel: ./install.sh", "./install.sh", b)
    for cmd in ("list", "show csr-d2s/table-ii"):
        times = []
        for _ in range(6):
            wall, rc, _ = sh(f".venv/bin/bench {cmd} > /dev/null", a, env, log)
            times.append(wall)
        rows.append((f"5. bench {cmd} (median of 5 after one warm-up)", statistics.median(times[1:]), rc,
                     ", ".join(f"{t:.2f}" for t in times[1:])))
    from bench.job import cpu_model

    lines = [f"# .venv/bin/python benchmarks/readme_figures.py{' --skip-tests' if args.skip_tests else ''}",
             f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {head}; {cpu_model()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}; load average {load:.2f} at the start",
             f"# work folder {work} (clones of this checkout, ../shared beside them, BENCH_CACHE new and empty)", ""]
    for name, wall, rc, tail in rows:
        lines.append(f"{wall:8.1f} s  {wall / 60:5.1f} min  rc {rc}  {name}" + (f"   [{tail}]" if tail else ""))
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
