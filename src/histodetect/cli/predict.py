"""`histodetect predict`: tumour probabilities for new patches, written as a Kaggle-style CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from histodetect.cli import options

if TYPE_CHECKING:
    from histodetect.inference.predictor import PredictionRow

HELP = "classify patches (image files, folders, globs, stores, PCam _x.h5) into a CSV of id,label"
MAX_LISTED_FAILURES = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files (.tif/.png/.jpg), folders (searched recursively), glob patterns, "
        "patch store folders or PCam _x.h5 files",
    )
    parser.add_argument(
        "--model",
        type=options.path_value,
        help="model.pt, run folder or model.onnx (default, or `bundled`: the bundled model)",
    )
    options.add_out(parser, "CSV file to write (id,label = tumour probability)")
    parser.add_argument("--with-path", action="store_true", help="add a path column")
    parser.add_argument(
        "--with-class",
        action="store_true",
        help="add class (0/1 at the model's threshold) and class_name columns",
    )
    options.add_fit_to_size(parser)
    options.add_inference(parser)
    options.add_workers(parser)
    options.add_overwrite(parser)
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    from histodetect.inference.inputs import collect_inputs
    from histodetect.inference.predictor import Predictor, check_output, write_predictions_csv

    check_output(args.out, args.overwrite)
    groups = collect_inputs(args.inputs)
    predictor = Predictor(
        args.model,
        tta=args.tta,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
    )
    spec = predictor.spec
    print(
        f"Model: {predictor.model_path} ({spec.model_name}, threshold {spec.threshold:.3f}, "
        f"temperature {spec.temperature:.3f}{', TTA x8' if args.tta else ''}) "
        f"on {predictor.description}."
    )
    rows = predictor.predict_inputs(
        groups, args.resize, args.center_crop, args.progress, args.workers
    )
    columns = write_predictions_csv(
        rows, args.out, args.with_path, args.with_class, spec, overwrite=args.overwrite
    )
    return _report(rows, args.out, added_path="path" in columns and not args.with_path)


def _report(rows: list[PredictionRow], out: Path, added_path: bool) -> int:
    """Warn about repeated ids, list failures, print the summary; 2 when nothing was predicted."""
    from histodetect.inference.predictor import duplicate_ids

    if added_path:
        duplicates = duplicate_ids(rows)
        print(
            f"warning: {len(duplicates)} ids occur more than once (e.g. {duplicates[0]}); "
            "added a path column to tell them apart.",
            file=sys.stderr,
        )
    converted = [row for row in rows if row.note is not None and row.error is None]
    if converted:
        # Predicted, but not from the file's own pixels as they are: say so, as ingest does.
        first = converted[0]
        print(
            f"note: {len(converted)} image{'s were' if len(converted) > 1 else ' was'} "
            f"converted before prediction (e.g. {first.path}: {first.note}); check "
            "that they are the H&E patches you meant.",
            file=sys.stderr,
        )
    failed = [row for row in rows if row.error is not None]
    for row in failed[:MAX_LISTED_FAILURES]:
        print(f"  {row.path}: {row.error}", file=sys.stderr)
    if len(failed) > MAX_LISTED_FAILURES:
        more = len(failed) - MAX_LISTED_FAILURES
        print(f"  ... and {more} more (see the error column)", file=sys.stderr)
    print(f"{len(rows) - len(failed)} predicted, {len(failed)} failed.")
    print(f"Predictions written to {out}.")
    return nothing_done(len(failed), len(rows), "predict", out)


def nothing_done(n_failed: int, n_rows: int, command: str, out: Path) -> int:
    """0, or 2 with one sentence on stderr when every input failed (each row says why).

    Every input being unreadable is a bad input like any other (exit code 2): it was 1, the
    code of an internal error, so a script could not tell a folder of broken files from a bug.
    """
    if not n_failed or n_failed < n_rows:
        return 0
    inputs = "the one input" if n_rows == 1 else f"none of the {n_rows} inputs"
    print(
        f"histodetect {command}: error: {inputs} could {'not ' if n_rows == 1 else ''}be "
        f"{command}ed: the error column of {out} says why for each; fix or replace them.",
        file=sys.stderr,
    )
    return 2
