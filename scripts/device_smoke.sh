#!/usr/bin/env bash
# The first thing to run on a GPU machine: tests/test_cuda.py (physics, the Stage-1 generator and the Stage-2 module
# on CUDA against the CPU, and tools/fit.py -- the main job's smoke config and a short Stage-1 fit -- on one GPU).
# With SCALE=1 the Stage-1 scale experiment follows when they pass (scripts/device_stage1_scale.sh, its variables).
#
#   bash scripts/device_smoke.sh                 # here: bash scripts/device_wheels.sh first; device call carry [".whl"]
#
# Writes cuda_tests.log into ${OUT:-runs/device_smoke} (the scale experiment adds its files beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-runs/device_smoke}
# shellcheck source=scripts/device_env.sh
. scripts/device_env.sh
mkdir -p "$OUT_DIR"
"$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no device')" | tee "$OUT_DIR/cuda_tests.log"
"$PY" -c "import torch; assert torch.cuda.is_available()" 2> /dev/null \
  || { echo "error: torch sees no CUDA device here: the CUDA tests would only be skipped" >&2; exit 3; }
status=0
"$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tee -a "$OUT_DIR/cuda_tests.log" || status=$?
[ "$status" = 0 ] || { echo "CUDA tests failed (exit $status): the scale experiment is not run"; exit "$status"; }
if [ "${SCALE:-0}" = 1 ]; then
  OUT="$OUT_DIR" bash scripts/device_stage1_scale.sh
fi
