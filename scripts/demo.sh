#!/usr/bin/env bash
# The main job end to end on built-in synthetic data. Usage: scripts/demo.sh [output folder]
set -euo pipefail
out=${1:-demo-output}
rm -rf "$out"   # the demo's own folder: each run starts clean
mkdir -p "$out"

echo "== 1/3 synthesise 4,000 H&E-like patches (Kaggle layout)"
histodetect synth --out "$out/synthetic" -n 4000 --seed 0 --no-progress

echo "== 2/3 ingest into a packed store"
histodetect ingest "$out/synthetic" --out "$out/store" --no-progress

echo "== 3/3 data report"
histodetect inspect "$out/store" --out "$out/inspect" > /dev/null

cat <<MSG

Demo finished. Outputs:
  synthetic patches  $out/synthetic/          (train/*.tif, train_labels.csv, test/*.tif)
  patch store        $out/store/              (pixels.u8, manifest.csv, header.json, ingest_report.md)
  data report        $out/inspect/inspect.md  (+ samples.png, class_balance.png)
MSG
