"""`bench audit` over every table: cold (a new profile cache) and cached, with the wall time of each,
and the audit's cells summarised by agreement word.

    .venv/bin/python benchmarks/audit_all.py [--out benchmarks/audit_all.txt] [--warm]

``--warm`` skips the cold pass and times the audit on the user's own profile cache ($BENCH_CACHE or
~/.cache/bench), for a rerun after a change that does not touch the models (the claim checks).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(cache: Path) -> tuple[float, dict]:
    env = dict(os.environ, BENCH_CACHE=str(cache))
    t = time.perf_counter()
    proc = subprocess.run([str(REPO / ".venv/bin/bench"), "audit", "--json"], env=env, capture_output=True,
                          text=True, check=True)
    return time.perf_counter() - t, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "audit_all.txt")
    ap.add_argument("--warm", action="store_true", help="no cold pass: time the audit on the existing cache")
    args = ap.parse_args()
    if args.warm:
        cache = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))
        first_s, out = run(cache)
        warm = [run(cache)[0] for _ in range(5)]
        cold = f"cold: not rerun in this pass (--warm; first pass on the existing cache {first_s:.0f} s, " \
               f"{out['profiled']} rows profiled)"
    else:
        with tempfile.TemporaryDirectory() as d:
            cold_s, out = run(Path(d))
            warm = [run(Path(d))[0] for _ in range(5)]
        cold = f"cold: {cold_s:.0f} s ({out['profiled']} rows profiled)"
    cells = out["cells"]
    words = collections.Counter(c["agreement"] for c in cells)
    lines = ["# .venv/bin/python benchmarks/audit_all.py" + (" --warm" if args.warm else ""),
             f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores; cold = new cache folder",
             f"{cold}; cached: median {sorted(warm)[len(warm) // 2]:.1f} s of "
             f"{', '.join(f'{w:.1f}' for w in warm)} s (load average {os.getloadavg()[0]:.1f} when written)",
             f"cells: {len(cells)}: " + ", ".join(f"{k} {v}" for k, v in words.most_common()), "",
             f"{'table':26s} {'row':28s} {'metric':9s} {'published':>10s} {'measured':>10s}  agreement"]
    for c in cells:
        m = f"{c['measured']:.4g}" if isinstance(c["measured"], (int, float)) else "-"
        p = f"{c['published']:g}" if c["published"] is not None else "?"
        lines.append(f"{c['table']:26s} {c['row']:28s} {c['metric']:9s} {p:>10s} {m:>10s}  {c['agreement']}")
    lines += ["", "consistency of the published numbers:"]
    lines += [f"  {f['kind']}: {', '.join(f['rows'])}: {f['detail']}" for f in out["consistency"]] or ["  none found"]
    claims = out.get("claims", [])
    words = collections.Counter(c["agreement"] for c in claims)
    lines += ["", f"claims stating a figure, against the table's own cells: {len(claims)}: "
              + ", ".join(f"{k} {v}" for k, v in words.most_common())]
    for c in claims:
        cells = "/".join("?" if v is None else f"{v:g}" for v in (c["cells"] or [])) or "-"
        got = f"{c['cells_delta']:+.3g}" if c["cells_delta"] is not None else "-"
        unit = "%" if c["relative"] else ""
        lines.append(f"  {c['agreement']:13s} {c['table']}/{c['row']} vs {c['vs']}: {c['metric']} stated "
                     f"{c['stated']:+g}{unit}{' (approx.)' if c['approximate'] else ''}, cells {cells} give {got}{unit}"
                     + (f"  [{c['note']}]" if c["note"] else ""))
    zoo = out.get("zoo", [])
    words = collections.Counter(z["agreement"] for z in zoo)
    lines += ["", f"model-zoo rows, published AP against mmdet's metafile: {len(zoo)} cells: "
              + ", ".join(f"{k} {v}" for k, v in words.most_common())]
    for z in zoo:
        meta = f"{z['metafile']:g}" if z["metafile"] is not None else "-"
        lines.append(f"  {z['agreement']:8s} {z['table']}/{z['row']} {z['metric']}: published {z['published']:g}, "
                     f"zoo {meta} ({z['zoo_model']})" + (f"  [{z['note']}]" if z["note"] else ""))
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:5]))


if __name__ == "__main__":
    main()
