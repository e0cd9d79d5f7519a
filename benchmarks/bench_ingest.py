"""Ingest and store-read throughput on this machine; prints a table for docs/BENCHMARKS.md.

Usage: python benchmarks/bench_ingest.py [--subset ../shared/data/pcam-subset] [--n-tif 5000]

Measures, in one run: (1) a bare decode loop (Pillow open + numpy copy, one process) over the
same files, (2) `ingest` of the PCam subset (JPEG class folders) and of Kaggle-style tifs
written by the synthetic generator, and (3) random 512-patch batch reads from the store.
The ratio ingest/bare-decode says whether ingest is limited by decoding or by overhead.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from histodetect.data.ingest import IngestOptions, ingest
from histodetect.data.sources.base import default_workers
from histodetect.data.sources.image_file import IMAGE_SUFFIXES
from histodetect.data.synthetic import write_kaggle_layout


def bare_decode_rate(paths: list[Path]) -> float:
    """Files per second of the simplest decode loop, one process."""
    start = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            np.asarray(im.convert("RGB"))
    return len(paths) / (time.perf_counter() - start)


def ingest_rate(source: Path, out: Path, workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    store, _ = ingest(source, out, IngestOptions(workers=workers, progress=False, overwrite=True))
    return len(store) / (time.perf_counter() - start), len(store)


def read_rate(store_path: Path, batch: int = 512, repeats: int = 200) -> float:
    from histodetect.data.store import open_store

    store = open_store(store_path)
    rng = np.random.default_rng(0)
    store.read(rng.choice(len(store), batch, replace=False))  # warm the page cache
    start = time.perf_counter()
    for _ in range(repeats):
        store.read(rng.choice(len(store), batch, replace=False))
    return batch * repeats / (time.perf_counter() - start)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=Path, default=Path("../shared/data/pcam-subset"))
    parser.add_argument("--n-tif", type=int, default=5000)
    args = parser.parse_args()
    workers = default_workers()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; workers {workers}")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="histodetect-bench-"))
    try:
        rows = []
        kaggle = tmp / "kaggle"
        write_kaggle_layout(kaggle, args.n_tif, seed=0, test_fraction=0.0, progress=False)
        sources = (("pcam-subset (JPEG folders)", args.subset, tmp / "subset-store"),
                   ("Kaggle-style tifs", kaggle, tmp / "kaggle-store"))  # fmt: skip
        for name, source, store in sources:
            paths = files_under(source)
            bare = bare_decode_rate(paths)
            rate, n = ingest_rate(source, store, workers)
            rows.append((name, n, bare, rate))
        reads = read_rate(tmp / "subset-store")
        print(
            f"\n| source | files | bare decode, 1 process (files/s) | ingest, {workers} workers (files/s) | ingest / bare |"
        )
        print("|---|---:|---:|---:|---:|")
        for name, n, bare, rate in rows:
            print(f"| {name} | {n} | {bare:,.0f} | {rate:,.0f} | {rate / bare:.2f} |")
        print(f"\nrandom 512-patch batch reads from a store: {reads:,.0f} patches/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
