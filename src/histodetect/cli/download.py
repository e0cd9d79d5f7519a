"""`histodetect download`: fetch PCam (verified, resumable) or the Kaggle competition files."""

from __future__ import annotations

import argparse
from pathlib import Path

from histodetect.cli import options

HELP = "download PCam from Zenodo (MD5-verified, resumable) or the Kaggle competition files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    pcam = sources.add_parser(
        "pcam", help="PatchCamelyon from Zenodo record 2546921 (about 7.5 GB for all splits)"
    )
    options.add_out(pcam, "folder for the PCam files (created if missing)")
    pcam.add_argument(
        "--splits",
        default="train,valid,test",
        metavar="SPLITS",
        help="comma-separated (default train,valid,test)",
    )
    _add_store(pcam)
    pcam.add_argument(
        "--url",
        metavar="URL",
        help="mirror; each file is fetched as URL/<file name> (default: Zenodo)",
    )
    pcam.add_argument(
        "--checksums",
        type=options.path_value,
        metavar="FILE",
        help="md5sum-style file '<md5>  <file name>' replacing the built-in table",
    )
    pcam.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="tries after a dropped connection or HTTP 5xx (default 5)",
    )
    pcam.add_argument(
        "--retry-wait",
        dest="retry_wait_s",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds before the first retry, doubled each time (default 2)",
    )
    options.add_progress(pcam)
    kaggle = sources.add_parser(
        "kaggle", help="the Kaggle competition files (needs the kaggle package and your token)"
    )
    options.add_out(kaggle, "folder to unpack train/, test/ and train_labels.csv into")
    _add_store(kaggle)
    options.add_progress(kaggle)


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        type=options.path_value,
        metavar="STORE",
        help="then run `histodetect ingest` into this new patch store",
    )


def run(args: argparse.Namespace) -> int:
    if args.source == "pcam":
        folder = _download_pcam(args)
    else:
        from histodetect.data.download import download_kaggle

        folder = download_kaggle(args.out, progress=args.progress)
        print(f"Kaggle files in {folder} (train/, test/, train_labels.csv).")
    if args.store is None:
        return 0
    return _ingest(folder, args.store, args.source, args.progress)


def _download_pcam(args: argparse.Namespace) -> Path:
    from histodetect.data.download import ZENODO_URL, FetchOptions, download_pcam
    from histodetect.data.download.fetch import format_size

    fetch = FetchOptions(
        retries=args.retries, retry_wait_s=args.retry_wait_s, progress=args.progress
    )
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    results = download_pcam(args.out, splits, args.url or ZENODO_URL, args.checksums, fetch)
    for r in results:
        print(f"  {r.path.name}: {r.status}, {format_size(r.size_bytes)}, MD5 verified")
    print(f"PCam files ({', '.join(splits)}) in {args.out}.")
    return Path(args.out)


def _ingest(folder: Path, store: Path, fmt: str, progress: bool) -> int:
    """Go straight on into `histodetect ingest FOLDER --out STORE`, with its own defaults."""
    from histodetect.cli import ingest

    parser = argparse.ArgumentParser(prog="histodetect ingest")
    ingest.add_arguments(parser)
    argv = [str(folder), "--out", str(store), "--format", fmt]
    return ingest.run(parser.parse_args(argv + ([] if progress else ["--no-progress"])))
