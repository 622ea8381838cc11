#!/usr/bin/env bash
# Installs bench and its pinned stack into ./.venv (idempotent; safe to re-run).
#   ./install.sh          runtime install
#   ./install.sh --dev    runtime + test dependencies (pytest, ...)
# mmcv 2.1.0 exists on PyPI only as a source tarball and takes ~7 min to build with its
# compiled ops on 2 cores, so the built wheel is cached under $BENCH_CACHE (default
# ~/.cache/bench) and reused by every later install on the same machine.
set -euo pipefail
cd "$(dirname "$0")"

EXTRAS=""
[[ "${1:-}" == "--dev" ]] && EXTRAS="[dev]"

PY=${PYTHON:-python3}
VENV=${BENCH_VENV:-.venv}
CACHE=${BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bench}
TORCH_VERSION=2.13.0
MMCV_VERSION=2.1.0
t0=$(date +%s)
log() { printf '[install %3ds] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

# A machine with a CUDA toolchain and a CUDA torch already installed (a GPU node) keeps that
# torch (venv sees system site-packages) and gets mmcv built with CUDA ops.
CUDA=0
if command -v nvcc >/dev/null 2>&1 && "$PY" -c 'import torch,sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
  CUDA=1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  if [[ $CUDA == 1 ]]; then "$PY" -m venv --system-site-packages "$VENV"; else "$PY" -m venv "$VENV"; fi
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)

# setuptools 80.x: still ships pkg_resources (mmcv's setup.py imports it) and satisfies torch 2.13.
"${PIP[@]}" "setuptools==80.10.2" wheel ninja numpy
if [[ $CUDA == 0 ]]; then
  "$VPY" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION')" 2>/dev/null \
    || { log "installing torch $TORCH_VERSION (CPU)"; "${PIP[@]}" "torch==$TORCH_VERSION"; }
fi

TORCH_TAG=$("$VPY" -c 'import torch,sys; v=torch.__version__.replace("+","-"); print("torch%s-py%d%d" % (v, *sys.version_info[:2]))')
[[ $CUDA == 1 ]] && TORCH_TAG="$TORCH_TAG-cuda" || TORCH_TAG="$TORCH_TAG-cpuops"
WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-$TORCH_TAG"

if "$VPY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  log "mmcv $MMCV_VERSION with ops already installed"
else
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    log "building mmcv $MMCV_VERSION with compiled ops (cold: ~7 min on 2 cores; cached in $WHEEL_DIR)"
    tmp=$(mktemp -d)
    "$VPY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$tmp"
    MMCV_WITH_OPS=1 FORCE_CUDA=$CUDA MAX_JOBS=${MAX_JOBS:-$(nproc)} \
      "$VPY" -m pip wheel --disable-pip-version-check -q --no-deps --no-build-isolation "$tmp"/mmcv-*.tar.gz -w "$tmp/out"
    # publish the cache entry atomically: a build killed half-way leaves no wheel behind
    mkdir -p "$(dirname "$WHEEL_DIR")"
    mv "$tmp/out" "$WHEEL_DIR.partial.$$" && mv -T "$WHEEL_DIR.partial.$$" "$WHEEL_DIR"
    rm -rf "$tmp"
  fi
  log "installing cached mmcv wheel from $WHEEL_DIR"
  "${PIP[@]}" --no-deps "$WHEEL_DIR"/mmcv-*.whl
fi

log "installing bench and pinned dependencies"
"${PIP[@]}" -e ".$EXTRAS"
"$VPY" -c "import mmcv.ops, mmdet, mmengine; from mmcv.ops import RoIAlign, nms" \
  || { echo "install.sh: mmcv ops failed to import" >&2; exit 1; }

# --dev: the system packages the test suite uses for real (a single-node SLURM cluster, headless
# Chromium for the HTML report), installed when this user can (root with apt-get); otherwise stop
# here, before the tests, with the exact commands to run.
if [[ -n "$EXTRAS" ]]; then
  need=()
  scripts/slurm-cluster missing >/dev/null 2>&1 || need+=(slurm)
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need+=(chromium)
  if (( ${#need[@]} )); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      export DEBIAN_FRONTEND=noninteractive
      if [[ " ${need[*]} " == *" slurm "* ]]; then log "installing the SLURM packages (scripts/slurm-cluster install)"; scripts/slurm-cluster install; fi
      if [[ " ${need[*]} " == *" chromium "* ]]; then
        log "installing chromium (headless browser for the HTML report tests)"
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
      fi
    else
      echo "install.sh: the tests need system packages this user cannot install (${need[*]}); as root run:" >&2
      [[ " ${need[*]} " == *" slurm "* ]] && echo "  sudo scripts/slurm-cluster install" >&2
      [[ " ${need[*]} " == *" chromium "* ]] && echo "  sudo apt-get install -y chromium" >&2
      exit 1
    fi
  fi
fi
log "done: $("$VENV/bin/bench" --version)"
