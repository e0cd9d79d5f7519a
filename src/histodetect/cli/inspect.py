"""`histodetect inspect`: print and save the data report of a patch store."""

from __future__ import annotations

import argparse
from pathlib import Path

from histodetect.cli import options

HELP = "data report of a store: classes, splits, duplicates, outliers, colours, sample grid"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "store", type=options.path_value, help="patch store folder (from `histodetect ingest`)"
    )
    options.add_out(parser, "report folder (default: <store>/inspect)", required=False)
    options.add_seed(parser)


def run(args: argparse.Namespace) -> int:
    from histodetect.data.inspection import write_inspection
    from histodetect.data.store import INSPECT_DIR, open_store

    store = open_store(args.store)
    out = args.out or Path(args.store) / INSPECT_DIR
    md_path = write_inspection(store, out, seed=args.seed)
    print(md_path.read_text())
    print(f"Report written to {md_path} (plots: samples.png, class_balance.png).")
    return 0
