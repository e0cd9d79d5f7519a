"""`histodetect ingest`: read a dataset in any supported layout into a packed patch store."""

from __future__ import annotations

import argparse

from histodetect.cli import options

HELP = "read Kaggle tifs, PCam .h5(.gz), class folders or a CSV of path,label into a patch store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        type=options.path_value,
        help="dataset folder, PCam .h5 file, or CSV of path,label",
    )
    options.add_out(parser, "store folder to create")
    parser.add_argument(
        "--format",
        dest="fmt",
        choices=("kaggle", "pcam", "folders", "csv"),
        help="override detection",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="read everything, then fail if there was any problem (all listed); leave no store",
    )
    parser.add_argument(
        "--drop-duplicates", action="store_true", help="keep one copy of exact duplicates"
    )
    parser.add_argument(
        "--drop-outliers", action="store_true", help="leave out blank/near-uniform patches"
    )
    parser.add_argument(
        "--slides",
        type=options.path_value,
        help="Kaggle only: CSV of id,slide giving each patch's slide",
    )
    options.add_workers(parser)
    options.add_overwrite(parser)
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    from histodetect.data.ingest import IngestOptions, ingest
    from histodetect.wording import plural

    opts = IngestOptions(
        fmt=args.fmt,
        strict=args.strict,
        drop_duplicates=args.drop_duplicates,
        drop_outliers=args.drop_outliers,
        workers=args.workers,
        overwrite=args.overwrite,
        slides_csv=args.slides,
        progress=args.progress,
    )
    store, report = ingest(args.source, args.out, opts)
    print("\n".join(report.summary_lines()))
    for split, c in store.header["counts"].items():
        print(
            f"  {split}: {plural(c['total'], 'patch')} ({c['tumour']} tumour, {c['normal']} "
            f"normal, {c['unlabelled']} unlabelled)"
        )
    print(f"Store written to {store.root} (report: {store.root / 'ingest_report.md'}).")
    return 0
