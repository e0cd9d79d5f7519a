"""`histodetect synth`: write synthetic H&E-like patches in the Kaggle layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from histodetect.cli import options

HELP = "write synthetic H&E-like patches (Kaggle layout) that follow the centre-32 px label rule"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_out(parser, "folder to create (Kaggle layout: train/, train_labels.csv, test/)")
    parser.add_argument("-n", type=int, default=4000, help="number of patches (default 4000)")
    parser.add_argument(
        "--test-fraction", type=float, default=0.1, help="share written to test/ unlabelled"
    )
    parser.add_argument(
        "--positive-fraction", type=float, default=0.4, help="share of tumour patches"
    )
    options.add_seed(parser)
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    from histodetect.data.synthetic import write_kaggle_layout

    summary = write_kaggle_layout(
        Path(args.out),
        args.n,
        seed=args.seed,
        test_fraction=args.test_fraction,
        positive_fraction=args.positive_fraction,
        progress=args.progress,
    )
    print(
        f"Wrote {summary['n_train']} labelled ({summary['n_positive_train']} tumour) and "
        f"{summary['n_test']} unlabelled synthetic patches to {summary['out_dir']} (seed {summary['seed']})."
    )
    return 0
