#!/usr/bin/env bash
# The exact recipe of the bundled model (docs/MODEL_CARD.md). Needs ../shared/data/pcam-subset.
# About 55 minutes on the 2-core development machine (CPU only).
set -euo pipefail
work=${1:-bundle-work}
histodetect ingest ../shared/data/pcam-subset --out "$work/stores/subset"
histodetect train --data "$work/stores/subset" --out "$work/runs/default" --seed 0
histodetect calibrate "$work/runs/default" --data "$work/stores/subset" --split valid --threshold youden
histodetect evaluate "$work/runs/default" --data "$work/stores/subset" --split valid --out "$work/reports/valid"
histodetect evaluate "$work/runs/default" --data "$work/stores/subset" --split valid --out "$work/reports/valid-tta" --tta
python scripts/bundle_model.py "$work/runs/default" "$work/reports/valid/metrics.json" "$work/reports/valid-tta/metrics.json"
