#!/usr/bin/env bash
# Every GPU measurement in one command (see benchmarks/gpu_suite.py):
#   bash benchmarks/gpu_suite.sh [--smoke] [--out DIR] [--only step1,step2]
# Writes DIR/gpu_<device>.json and DIR/gpu_<device>.md (DIR defaults to
# benchmarks/results). --smoke: the same code at tiny sizes on the CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
SMOKE=0
for arg in "$@"; do [[ "$arg" == "--smoke" ]] && SMOKE=1; done
if [[ $SMOKE == 1 ]]; then
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
  # compiled smoke steps are cached outside the repository: later runs start warm
  if [[ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]]; then
    export JAX_COMPILATION_CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/maskjax/jax_cache_smoke"
    export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
    export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
  fi
fi
cd "$ROOT"
exec "$PY" "$ROOT/benchmarks/gpu_suite.py" "$@"
