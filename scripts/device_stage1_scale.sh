#!/usr/bin/env bash
# Stage-1's default recipe at GPU scale inside a time budget, then its K-calibration on the 64 test scenes that
# BENCHMARKS.md "Stage-1 generator" (sessions 8-10) uses: the experiment that says whether compute takes the
# embedded default under 15% K error (configs/stage1_scale.yaml says why).
#
#   bash scripts/device_stage1_scale.sh                      # any machine with the project's packages and a GPU
#
# On the session tool's GPU machine (a bare image with PyTorch and Lightning but no diffusers / kornia / omegaconf):
# first, here, `bash scripts/device_wheels.sh` (fills .whl/), then run this script with carry [".whl"]; it installs
# them into /tmp/site. Writes into ${OUT:-runs/device_stage1_scale} (at most 8 files, as the device tool brings back):
# probe.json, result.json (the fit's), compare.json + compare.log (the 64-scene comparison), fit.log, summary.txt
# (7 with CALIBRATE=1, leaving one for scripts/device_smoke.sh's cuda_tests.log).
#
# Environment (defaults for one H100-class GPU and a 10-minute command):
#   TRAIN_S=300        seconds of training steps the main fit is sized for (measured rate x TRAIN_S = max_steps)
#   PROBE_STEPS=300    steps of the rate probe (a short fit of the same config); the rate is its steady one, the
#                      first 10% of the steps (loader start-up) and validation left out
#   MAX_STEPS_CAP=200000, COMPARE_SCENES=64, PYTHON=python3
#   CALIBRATE=0        1: the fit also fits the K calibration (calibration.enabled=true, validation scenes) and the
#                      calibrated generator is compared too (compare_calibrated.json, its log appended to
#                      compare.log; ~2 min more)
#   OVERRIDES="..."    extra config overrides for both fits (tests use them to run it tiny on a CPU)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
TRAIN_S=${TRAIN_S:-300}
PROBE_STEPS=${PROBE_STEPS:-300}
MAX_STEPS_CAP=${MAX_STEPS_CAP:-200000}
COMPARE_SCENES=${COMPARE_SCENES:-64}
OUT_DIR=${OUT:-runs/device_stage1_scale}
WORK=${WORK_DIR:-runs/device_stage1_scale_work}
CALIBRATE=${CALIBRATE:-0}
read -r -a EXTRA <<< "${OVERRIDES:-}"
FIT_EXTRA=()
[ "$CALIBRATE" = 1 ] && FIT_EXTRA=(calibration.enabled=true)
# shellcheck source=scripts/device_env.sh
. scripts/device_env.sh
mkdir -p "$OUT_DIR" "$WORK"
rm -rf "$WORK/probe" "$WORK/fit" "$WORK/compare" "$WORK/compare_calibrated"

echo "== rate probe: $PROBE_STEPS steps"
"$PY" tools/fit.py --config configs/stage1_scale.yaml trainer.max_steps="$PROBE_STEPS" \
  trainer.val_check_interval="$PROBE_STEPS" run.dir="$WORK/probe" "${EXTRA[@]}" > "$WORK/probe.log" 2>&1 \
  || { tail -n 40 "$WORK/probe.log"; exit 1; }
STEPS=$("$PY" - "$WORK/probe/result.json" "$TRAIN_S" "$MAX_STEPS_CAP" "$OUT_DIR/probe.json" <<'EOF'
import json, sys
result = json.load(open(sys.argv[1]))
train_s = result["fit_s"] - result["fit_validation_s"]  # the loop's seconds, start-up included
overall = result["steps"] / train_s
# the steady rate (start-up steps skipped, lightning_modules.callbacks.TrainingRate) when the probe timed one
rate = result.get("train_steps_per_s") or overall
steps = max(1, min(int(rate * float(sys.argv[2])), int(sys.argv[3])))
json.dump({"probe_steps": result["steps"], "probe_train_s": train_s, "overall_steps_per_s": overall,
           "steps_per_s": rate, "max_steps": steps}, open(sys.argv[4], "w"), indent=2)
print(steps)
EOF
)
echo "   -> trainer.max_steps=$STEPS for ${TRAIN_S}s of training ($(tr -d '\n ' < "$OUT_DIR/probe.json"))"

echo "== fit"
VAL_EVERY=$(( STEPS / 10 > 0 ? STEPS / 10 : 1 ))
"$PY" tools/fit.py --config configs/stage1_scale.yaml trainer.max_steps="$STEPS" trainer.val_check_interval="$VAL_EVERY" \
  run.dir="$WORK/fit" "${FIT_EXTRA[@]}" "${EXTRA[@]}" > "$OUT_DIR/fit.log" 2>&1 || { tail -n 40 "$OUT_DIR/fit.log"; exit 1; }
cp "$WORK/fit/result.json" "$OUT_DIR/result.json"

echo "== compare: $COMPARE_SCENES test scenes"
"$PY" tools/compare_bokeh.py --generator "$WORK/fit" --uncalibrated --out "$WORK/compare" \
  --num-scenes "$COMPARE_SCENES" --fit2d-scenes 0 --max-grids 2 > "$OUT_DIR/compare.log" 2>&1 \
  || { tail -n 40 "$OUT_DIR/compare.log"; exit 1; }
cp "$WORK/compare/results.json" "$OUT_DIR/compare.json"
grep -E "^  (learned|uniform_disk|identity)|^  K=|measurable" "$OUT_DIR/compare.log" | tee "$OUT_DIR/summary.txt"
if [ "$CALIBRATE" = 1 ]; then
  echo "== compare, K-calibrated"
  echo "== K-calibrated generator" >> "$OUT_DIR/compare.log"
  "$PY" tools/compare_bokeh.py --generator "$WORK/fit" --out "$WORK/compare_calibrated" \
    --num-scenes "$COMPARE_SCENES" --fit2d-scenes 0 --max-grids 2 > "$WORK/compare_calibrated.log" 2>&1 \
    || { tail -n 40 "$WORK/compare_calibrated.log"; exit 1; }
  cat "$WORK/compare_calibrated.log" >> "$OUT_DIR/compare.log"
  cp "$WORK/compare_calibrated/results.json" "$OUT_DIR/compare_calibrated.json"
  grep -E "^  learned |^  K=" "$WORK/compare_calibrated.log" | sed 's/^/calibrated /' | tee -a "$OUT_DIR/summary.txt"
fi
