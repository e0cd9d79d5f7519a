#!/usr/bin/env bash
# The exact recipe of the bundled model (docs/MODEL_CARD.md). Needs ../shared/data/pcam-subset.
# Two stages, both on the default recipe (histocnn, 16 epochs, EMA 0.99) with both threads of
# the 2-core machine (THREADS=N to change):
#   1. the teacher: four runs (four-block seeds 0 and 1, five-block seeds 0 and 1) averaged by
#      `histodetect ensemble` and calibrated on the valid split (valid AUC 0.9538);
#   2. the student: one four-block run, seed 0, that also learns the teacher's probabilities
#      (`train --teacher`), calibrated and evaluated on the valid split, then stored with int8
#      weights (1.9 MB). It costs what one model costs to run.
# Stage 2 takes about an hour on two threads (estimated from the runs in docs/BENCHMARKS.md);
# stage 1 four times that, which is over issue 7's 90 minutes: TEACHER=path/to/model.pt skips
# it with a teacher built before (the ensemble of stage 1, or any model `predict` takes).
# The body is one function, read whole before it runs: bash reads a plain script as it goes, so
# editing this file during the long run would make it execute shifted text.
set -euo pipefail
main() {
work=${1:-bundle-work}
store="$work/stores/subset"
threads=${THREADS:-2}
[ -d "$store" ] || histodetect ingest ../shared/data/pcam-subset --out "$store" --no-progress

train() {  # name, then train options
  local name=$1; shift
  [ -f "$work/runs/$name/summary.json" ] && return 0  # finished before: a rerun keeps it
  local resume=()
  [ -f "$work/runs/$name/checkpoints/last.ckpt" ] && resume=(--resume "$work/runs/$name")
  if [ ${#resume[@]} -gt 0 ]; then
    OMP_NUM_THREADS=$threads histodetect train "${resume[@]}" --no-progress
  else
    OMP_NUM_THREADS=$threads histodetect train --data "$store" --out "$work/runs/$name" "$@" --no-progress
  fi > "$work/train-$name.log" 2>&1 || { echo "training $name failed; see $work/train-$name.log" >&2; exit 1; }
}

teacher=${TEACHER:-}
if [ -z "$teacher" ]; then
  five='{"conv_channels": [32, 64, 128, 128, 256]}'
  train b4_s0 --seed 0
  train b4_s1 --seed 1
  train b5_s0 --seed 0 --model-kwargs "$five"
  train b5_s1 --seed 1 --model-kwargs "$five"
  teacher="$work/teacher/model.pt"
  histodetect ensemble "$work/runs/b4_s0" "$work/runs/b4_s1" "$work/runs/b5_s0" "$work/runs/b5_s1" \
    --out "$teacher" --overwrite
  histodetect calibrate "$teacher" --data "$store" --split valid --threshold youden
fi

train student_s0 --seed 0 --teacher "$teacher"
model="$work/runs/student_s0/model.pt"
histodetect calibrate "$model" --data "$store" --split valid --threshold youden
histodetect evaluate "$model" --data "$store" --split valid --out "$work/reports/valid" --shift all --overwrite
histodetect evaluate "$model" --data "$store" --split valid --out "$work/reports/valid-tta" --tta --overwrite
python scripts/bundle_model.py "$model" "$work/reports/valid/metrics.json" "$work/reports/valid-tta/metrics.json"
}
main "$@"
