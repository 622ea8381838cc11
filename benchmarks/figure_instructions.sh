#!/usr/bin/env bash
# Benchmark: the CPU instructions matplotlib spends drawing every figure of the 1,000-file report
# (benchmarks/figure_draw.py), counted by valgrind (cachegrind, no cache simulation): unlike seconds on a
# shared VM, whose speed drifts by a quarter from one minute to the next, the count is the same every run.
#
#   benchmarks/figure_instructions.sh [TREE] [--formats svg|png|svg,png]
#
# TREE: the checkout whose benchmarks/figure_draw.py and bench/ are counted (default: this one; an older
# commit: `git worktree add /tmp/old <rev>`). Prints the instructions of one drawing of every figure: a run
# with one repeat minus a run with none (the same fixtures, gathering and imports). About 2 minutes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tree=$here
if [[ $# -gt 0 && $1 != --* ]]; then tree=$(cd "$1" && pwd); shift; fi
py=$here/.venv/bin/python
count() {  # instructions of one run of figure_draw.py with the given arguments
  local out
  out=$(mktemp)
  (cd "$tree" && valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
      "$py" benchmarks/figure_draw.py "$@" >/dev/null 2>"$out") || { cat "$out" >&2; exit 1; }
  grep -E "I +refs" "$out" | tail -1 | sed -E 's/.*refs: *//; s/,//g'
  rm -f "$out"
}
base=$(count --repeats 0 "$@")
one=$(count --repeats 1 "$@")
echo "tree $tree ($(git -C "$tree" rev-parse --short HEAD)), figure_draw.py $*: drawing $(( (one - base) / 1000000 )) M instructions (run $one - baseline $base)"
