"""Valid AUC, TTA AUC and AUC under the seeded image shifts for trained models, as a Markdown table.

Usage:
    python benchmarks/bench_robustness.py --data STORE MODEL [MODEL ...] [--split valid]
        [--shift-seed 0] [--out reports/robustness]

MODEL is a run folder or a model file (an ensemble's model.pt included). Each model is
evaluated with `histodetect.evaluation.evaluate` (the same code as `histodetect evaluate
--shift all`), once without and once with 8x D4 test-time augmentation; the table goes to
stdout and each model's metrics.json and report.html under --out. The rows of
docs/BENCHMARKS.md (issue 7) come from this script.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from histodetect.evaluation.evaluate import EvaluateOptions, evaluate
from histodetect.evaluation.shifts import SHIFTS


def _row(name: str, plain: dict, tta: dict, elapsed_s: float) -> str:
    shifts = plain["shifts"]["results"]
    lo, hi = plain["auc_ci95"]
    cells = [name, f"{plain['auc']:.4f} ({lo:.4f}-{hi:.4f})", f"{tta['auc']:.4f}",
             f"{shifts['mean']['auc']:.4f}", *(f"{shifts[s]['auc']:.4f}" for s in SHIFTS),
             f"{elapsed_s:.0f}"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--shift-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/robustness"))
    args = parser.parse_args()
    header = ["model", "AUC (95% CI)", "AUC 8x TTA", "shifted mean", *SHIFTS, "eval s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for model in args.models:
        name = model.name if model.is_dir() else f"{model.parent.name}/{model.name}"
        started = time.monotonic()  # overwrite: a rerun replaces its own reports
        plain = evaluate(model, args.data, args.out / name / "plain", EvaluateOptions(
            split=args.split, shifts=tuple(SHIFTS), shift_seed=args.shift_seed, n_boot=1000,
            overwrite=True))  # fmt: skip
        tta = evaluate(model, args.data, args.out / name / "tta",
                       EvaluateOptions(split=args.split, tta=True, n_boot=200, overwrite=True))  # fmt: skip
        print(_row(name, plain, tta, time.monotonic() - started), flush=True)
        row = {"auc": plain["auc"], "auc_tta": tta["auc"], "shifts": plain["shifts"]}
        (args.out / name / "row.json").write_text(json.dumps(row, indent=2, default=float))


if __name__ == "__main__":
    main()
