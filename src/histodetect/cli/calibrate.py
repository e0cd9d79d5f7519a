"""`histodetect calibrate`: fit temperature and decision threshold on a split; save them in the model."""

from __future__ import annotations

import argparse

from histodetect.cli import options

HELP = "fit temperature and threshold on a (validation) split and save them in the model's spec"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=options.path_value, help="run folder or model.pt")
    options.add_store(parser)
    parser.add_argument(
        "--split", default="valid", help="split to fit on (default valid); never report it as test"
    )
    options.add_threshold(parser)
    options.add_inference(parser)


def run(args: argparse.Namespace) -> int:
    from histodetect.data.store import open_store
    from histodetect.evaluation.eval_splits import resolve_split
    from histodetect.evaluation.evaluate import calibrate
    from histodetect.models.checkpoint import load_checkpoint

    loaded, store = load_checkpoint(args.model), open_store(args.data)
    split = resolve_split(store, args.split, loaded)
    cal = calibrate(
        loaded, store, split, args.threshold, args.tta, args.device, args.batch_size, args.precision
    )
    print(f"Fitted on {split.name} ({len(split.indices)} patches, {split.role}): temperature "
          f"{cal.spec.temperature:.3f}, threshold {cal.spec.threshold:.4f} ({args.threshold}); saved in {cal.path}.")  # fmt: skip
    print(
        "Report on a different split (e.g. --split test), or label figures on this split as validation."
    )
    return 0
