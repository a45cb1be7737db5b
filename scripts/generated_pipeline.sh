#!/usr/bin/env bash
# The paper's real pipeline next to the physics-stack default, on the same synthetic scenes:
#   1. Stage-1 generator: train one (configs/stage1.yaml) or reuse GENERATOR=<run dir>
#   2. export the train / val / test scenes (tools/export_synthetic.py; physics stacks at the same K as a twin)
#   3. Stage-1 stacks for train / val (tools/make_stack.py -> stacks.jsonl, a Stage-2 manifest)
#   4. Stage-2 on physics stacks (+ the base model) and Stage-2 on generated stacks (configs/stage2_generated.yaml),
#      identical model / optimiser / budget / scenes / K; only the stack source differs
#   5. tools/eval.py on the synthetic test split: base, both BokehDepth models with physics (ORACLE) and
#      Stage-1 stacks and without a stack (control), and the closed-form depth-from-bokeh baseline
# Usage: bash scripts/generated_pipeline.sh [OUT]          (default runs/generated_pipeline/<stamp>)
# Focus: one far focus for every scene (FOCUS_M=100 m, beyond the 0.5-10 m scenes), as in stage2.yaml's physics
# stacks and Stage-1's training targets (configs/stage1.yaml): the generator has no focus input and puts the focal
# plane where it learned to. FOCUS_M=null: each scene's nearest subject (for generators trained that way).
# Scenes: SCENE_OPTIONS (JSON, default {}) = physics.scenes.make_scene keywords for every split and the eval, e.g.
# '{"appearance_cues": 1.0}', the scenes configs/stage1.yaml trains on (haze, texture scale: depth shows in the look);
# {} = Stage-2's depth-hiding scenes, where a depth-free generator cannot know where the blur goes.
# Knobs (environment): GENERATOR, NUM_TRAIN (1000), NUM_VAL (64), NUM_TEST (200), SIZE (112), K (px*m at SIZE;
#   default "2 5 12" x SIZE / 112, the same blur relative to the image at any SIZE), FOCUS_M,
#   STAGE1_OVERRIDES, FIT_OVERRIDES (e.g. "trainer.max_epochs=2 threads=1"), GEN_STEPS (generator's default),
#   THREADS (1), PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/generated_pipeline/$(date +%Y%m%d-%H%M%S)}
NUM_TRAIN=${NUM_TRAIN:-1000}; NUM_VAL=${NUM_VAL:-64}; NUM_TEST=${NUM_TEST:-200}
SIZE=${SIZE:-112}; THREADS=${THREADS:-1}; FOCUS_M=${FOCUS_M:-100.0}
# K is px*m at the working width SIZE (radii scale with the width): Stage-2's 2 5 12 at 112 px, scaled to SIZE
K=${K:-$(awk -v s="$SIZE" 'BEGIN { printf "%.6g %.6g %.6g", 2 * s / 112, 5 * s / 112, 12 * s / 112 }')}
SCENE_OPTIONS=${SCENE_OPTIONS:-"{}"}
FOCUS_ARG=()
[[ "$FOCUS_M" != null ]] && FOCUS_ARG=(--focus-m "$FOCUS_M")
K_LIST="[${K// /,}]"
FIT_OVERRIDES=${FIT_OVERRIDES:-}
STEPS_ARG=()
[[ -n "${GEN_STEPS:-}" ]] && STEPS_ARG=(--steps "$GEN_STEPS")
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=$THREADS
if [[ -e "$OUT" ]] && [[ -n "$(ls -A "$OUT" 2>/dev/null)" ]]; then
  echo "error: $OUT exists and is not empty; name another output folder" >&2; exit 2
fi
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/pipeline.log"; }
log "out=$OUT train=$NUM_TRAIN val=$NUM_VAL test=$NUM_TEST size=$SIZE K=$K focus=$FOCUS_M scenes=$SCENE_OPTIONS"
log "fit_overrides='$FIT_OVERRIDES'"

# 1. Stage-1
if [[ -n "${GENERATOR:-}" ]]; then
  log "stage-1: reusing $GENERATOR"
else
  log "stage-1: training (configs/stage1.yaml ${STAGE1_OVERRIDES:-})"
  # shellcheck disable=SC2086
  $PY tools/fit.py --config stage1.yaml run.dir="$OUT/stage1" ${STAGE1_OVERRIDES:-}
  GENERATOR="$OUT/stage1"
fi

# 2. scenes (+ physics twins at the same K)
for split in train val test; do
  var="NUM_${split^^}"
  log "export $split (${!var} scenes)"
  $PY tools/export_synthetic.py --out "$OUT/data/${split}_scenes" --split "$split" --num "${!var}" \
      --size "$SIZE" "$SIZE" --physics-K $K "${FOCUS_ARG[@]}" --scene-options "$SCENE_OPTIONS"
done

# 3. Stage-1 stacks for training (the test split's are generated inside tools/eval.py)
for split in train val; do
  log "make_stack $split"
  $PY tools/make_stack.py --generator "$GENERATOR" --input "$OUT/data/${split}_scenes/scenes.jsonl" \
      --out "$OUT/data/${split}_stage1" --K $K --K-at-width "$SIZE" "${STEPS_ARG[@]}"
done

# 4. Stage-2: physics stacks (+ base), then generated stacks; same config apart from the manifests
common=(data.manifest.test="$OUT/data/test_scenes/stacks_physics.jsonl" threads="$THREADS")
log "stage-2 on physics stacks (+ base)"
# shellcheck disable=SC2086
$PY tools/fit.py --config stage2_generated.yaml name=stage2_physics_manifest compare_base=true \
    run.dir="$OUT/stage2_physics" data.manifest.train="$OUT/data/train_scenes/stacks_physics.jsonl" \
    data.manifest.val="$OUT/data/val_scenes/stacks_physics.jsonl" "${common[@]}" $FIT_OVERRIDES
log "stage-2 on Stage-1 stacks"
# shellcheck disable=SC2086
$PY tools/fit.py --config stage2_generated.yaml run.dir="$OUT/stage2_generated" \
    data.manifest.train="$OUT/data/train_stage1/stacks.jsonl" \
    data.manifest.val="$OUT/data/val_stage1/stacks.jsonl" "${common[@]}" $FIT_OVERRIDES

# 5. one table on the synthetic test split (the same scenes as test_scenes; physics stacks at the same K)
log "eval"
$PY tools/eval.py --threads "$THREADS" --base "base=$OUT/stage2_physics" \
    --bokehdepth "BD-physics=$OUT/stage2_physics" --bokehdepth "BD-generated=$OUT/stage2_generated" \
    --generator "$GENERATOR" "${STEPS_ARG[@]/--steps/--generator-steps}" --config data/synthetic.yaml \
    --out "$OUT/variants" data.synthetic.num_test="$NUM_TEST" data.synthetic.height="$SIZE" \
    data.synthetic.width="$SIZE" data.synthetic.K_px_m="$K_LIST" data.synthetic.focus_m="$FOCUS_M" \
    data.synthetic.scene_options="$SCENE_OPTIONS"
log "done: $OUT/variants/metrics.md"
