"""`histodetect evaluate`: metrics, calibrated threshold and an HTML report for one split of a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from histodetect.cli import options

HELP = "evaluate a model on a store split: metrics.json, report.html, plots; optionally calibrate first"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        type=options.path_value,
        help="run folder, model.pt, checkpoint, exported model.onnx (no --calibrate-on) or `bundled`",
    )
    options.add_store(parser)
    parser.add_argument(
        "--split",
        default="valid",
        help="split to report (default valid; all = every labelled patch)",
    )
    options.add_out(parser, "report folder")
    parser.add_argument(
        "--calibrate-on",
        metavar="SPLIT",
        help="fit temperature and threshold on this split first and save them in the model (never the reported split)",
    )
    options.add_threshold(parser, "with --calibrate-on: ", default=None)
    options.add_inference(parser)
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="resamples for the AUC interval"
    )
    parser.add_argument(
        "--shift",
        metavar="NAMES",
        help="also report AUC under seeded image shifts: a comma list of stain, colour, gamma, "
        "blur, jpeg, noise, or all (robustness to other labs and scanners)",
    )
    parser.add_argument(
        "--shift-seed", type=options.seed_value, default=0, help="seed of the shifts (default 0)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier report in --out (only one evaluate wrote; the old one is kept "
        "until the new one is complete)",
    )


def run(args: argparse.Namespace) -> int:
    from histodetect.errors import HistodetectError
    from histodetect.evaluation.evaluate import EvaluateOptions, evaluate
    from histodetect.evaluation.shifts import parse_shifts

    if args.threshold is not None and args.calibrate_on is None:
        raise HistodetectError(
            f"--threshold {args.threshold} is only used with --calibrate-on SPLIT (without it "
            "evaluate reports at the threshold saved in the model); add --calibrate-on valid, "
            "or drop --threshold and run `histodetect calibrate` first."
        )
    opts = EvaluateOptions(
        split=args.split,
        tta=args.tta,
        calibrate_on=args.calibrate_on,
        threshold=args.threshold or "youden",
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        n_boot=args.bootstrap,
        shifts=parse_shifts(args.shift),
        shift_seed=args.shift_seed,
        overwrite=args.overwrite,
    )
    m = evaluate(args.model, args.data, args.out, opts)
    lo, hi = m["auc_ci95"] or (float("nan"), float("nan"))
    for warning in m["warnings"]:
        print(f"WARNING: {warning}")
    print(f"{m['split']} ({m['split_role']}): {m['n']} patches, {m['n_positive']} tumour")
    print(f"AUC {m['auc']:.4f} (95% CI {lo:.4f}-{hi:.4f})  accuracy {m['accuracy']:.4f}  "
          f"balanced accuracy {m['balanced_accuracy']:.4f}")  # fmt: skip
    if m.get("auc_ci95_slides"):
        slo, shi = m["auc_ci95_slides"]
        print(
            f"AUC 95% CI with whole slides resampled: {slo:.4f}-{shi:.4f} (patches of one "
            "slide are alike: this is the interval for new slides)"
        )
    print(f"threshold {m['threshold']:.4f}: sensitivity {m['sensitivity']:.4f}  specificity {m['specificity']:.4f}  "
          f"NLL {m['nll']:.4f}  ECE {m['ece']:.4f}  (temperature {m['temperature']:.3f}, TTA {'on' if m['tta'] else 'off'})")  # fmt: skip
    print(m["classification_report_text"])
    for name, r in m.get("shifts", {}).get("results", {}).items():
        ci = r["auc_ci95"]
        interval = f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""
        print(f"shift {name:7s} AUC {r['auc']:.4f}{interval}  {r['description']}")
    print(f"Report: {Path(args.out) / 'report.html'}  metrics: {Path(args.out) / 'metrics.json'}")
    return 0
