#!/usr/bin/env bash
# The exact recipe of the bundled model (docs/MODEL_CARD.md). Needs ../shared/data/pcam-subset.
# The default recipe (histocnn with two convs per block, 12 epochs) trained with seeds 0 and 1
# side by side, one thread each, combined into an ensemble (mean logit), calibrated and evaluated on the valid split.
# About 75 minutes on the 2-core development machine (CPU with AMX bf16) when nothing else runs
# (the two trainings took 63 and 70 minutes side by side).
set -euo pipefail
work=${1:-bundle-work}
store="$work/stores/subset"
[ -d "$store" ] || histodetect ingest ../shared/data/pcam-subset --out "$store" --no-progress

pids=()
for seed in 0 1; do
  OMP_NUM_THREADS=1 histodetect train --data "$store" --out "$work/runs/seed$seed" --seed "$seed" \
    --no-progress > "$work/train-seed$seed.log" 2>&1 &
  pids+=("$!")
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "training seed $i failed; see $work/train-seed$i.log" >&2; exit 1; }
done

histodetect ensemble "$work/runs/seed0" "$work/runs/seed1" --out "$work/runs/ensemble/model.pt" --overwrite
histodetect calibrate "$work/runs/ensemble/model.pt" --data "$store" --split valid --threshold youden
histodetect evaluate "$work/runs/ensemble/model.pt" --data "$store" --split valid --out "$work/reports/valid" --shift all
histodetect evaluate "$work/runs/ensemble/model.pt" --data "$store" --split valid --out "$work/reports/valid-tta" --tta
python scripts/bundle_model.py "$work/runs/ensemble/model.pt" "$work/reports/valid/metrics.json" "$work/reports/valid-tta/metrics.json"
