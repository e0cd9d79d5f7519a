"""`histodetect explain`: calibrated probability and a Grad-CAM overlay PNG for each patch."""

from __future__ import annotations

import argparse
import sys

from histodetect.cli import options
from histodetect.cli.predict import MAX_LISTED_FAILURES, nothing_done

HELP = "Grad-CAM overlays (which pixels drove the decision) and probabilities of single patches"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "patches",
        nargs="+",
        metavar="PATCH",
        help="patch images (.tif/.png/.jpg), folders, glob patterns, patch stores or PCam _x.h5 "
        "files, as for predict",
    )
    options.add_out(parser, "folder to write: <id>.png per patch and explanations.csv")
    parser.add_argument(
        "--model",
        type=options.path_value,
        help="model.pt or run folder (default, or `bundled`: the bundled model)",
    )
    options.add_fit_to_size(parser)
    options.add_inference(parser)
    options.add_workers(parser)
    options.add_overwrite(parser)
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    from histodetect.explain.explanations import CSV_FILE, check_out_folder, explain_inputs
    from histodetect.inference.predictor import Predictor

    check_out_folder(args.out, args.overwrite)
    predictor = Predictor(
        args.model,
        tta=args.tta,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
    )
    rows = explain_inputs(
        args.patches,
        args.out,
        predictor,
        overwrite=args.overwrite,
        progress=args.progress,
        workers=args.workers,
        resize=args.resize,
        center_crop=args.center_crop,
    )
    failed = [row for row in rows if row.error is not None]
    for row in failed[:MAX_LISTED_FAILURES]:
        print(f"  {row.path}: {row.error}", file=sys.stderr)
    print(f"{len(rows) - len(failed)} patches explained, {len(failed)} failed; see {args.out}.")
    return nothing_done(len(failed), len(rows), "explain", args.out / CSV_FILE)
