#!/usr/bin/env bash
# The README's two commands:
#   ./quickstart.sh demo   set up .venv, then collect demos -> train -> evaluate -> report (runs/demo/report.md)
#   ./quickstart.sh test   set up .venv, then run the test suite
# Both are idempotent: a second run reuses .venv and reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")"

TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # GPU users: TORCH_SPEC="torch==2.13.0 --index-url <their CUDA index>"
PYTHON=${PYTHON:-python3}

setup() {
  local t0=$SECONDS
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  # Torch first and pinned: anything later that asks for "torch" is then already satisfied, so pip never
  # pulls the newest multi-GB CUDA build.
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q $TORCH_SPEC
  local stamp=.venv/.robopolicy-installed
  if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
    .venv/bin/pip install -q -e ".[sim,ros,export,dev]"
    cp pyproject.toml "$stamp"
  fi
  # Off-screen MuJoCo rendering on a CPU (rollout videos) needs OSMesa.
  if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then
    if [ "$(id -u)" = 0 ]; then
      (apt-get install -y -qq libosmesa6 >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libosmesa6 >/dev/null)) \
        || echo "warning: could not install libosmesa6; videos will be skipped" >&2
    else
      echo "note: for rollout videos run: sudo apt-get install -y libosmesa6" >&2
    fi
  fi
  echo "setup: $((SECONDS - t0)) s"
}

export MUJOCO_GL=${MUJOCO_GL:-osmesa}
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-osmesa}

case "${1:-}" in
  demo) shift; setup; t0=$SECONDS; .venv/bin/robopolicy demo "$@"; echo "demo job: $((SECONDS - t0)) s" ;;
  test) shift; setup; .venv/bin/python -m pytest -q "$@" ;;
  *) echo "usage: $0 demo|test [extra args]" >&2; exit 2 ;;
esac
