"""Whole-slide throughput (tiles/s) split into masking, reading and inference, against the
model-only rate of the same model in the same run; prints a table for docs/BENCHMARKS.md.

Usage: python benchmarks/bench_slide.py [--copies 3] [--batch-size 256] [--device cpu]
                                        [--model M] [--readers tifffile,openslide]

The slide is the test layout (tests/slidefiles.py: real PCam valid patches among blank glass)
repeated copies x copies times, written as a 4-level tiled pyramidal TIFF at 0.486 µm/px, so
tiles are read from level 1 at the model's 0.972 µm/px. "Model only" scores the same number
of in-memory patches with the same Predictor and batch size: the ceiling the slide path can
reach. "serial" reads and scores one after the other; the default overlaps reading with
inference (a reading thread). Every variant runs once per round, rounds interleaved so that
background load hits all alike; each figure is the best of --repeats rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test-slide writer, shared with the tests

from histodetect.inference.predictor import Predictor  # noqa: E402
from histodetect.slides.analysis import SlideAnalysis, analyse_slide  # noqa: E402
from histodetect.slides.reader import open_slide  # noqa: E402
from slidefiles import LEVEL0_MPP, canvas, write_pyramid  # noqa: E402


def build_slide(shared_data: Path, folder: Path, copies: int) -> Path:
    image, _ = canvas(shared_data)
    tiled = np.tile(image, (copies, copies, 1))
    level0 = tiled.repeat(2, axis=0).repeat(2, axis=1)
    return write_pyramid(folder / "bench.tif", level0, LEVEL0_MPP)


def slide_run(path: Path, variant: str, predictor: Predictor) -> SlideAnalysis:
    """One analysis; `variant` is a reader name, with " serial" for no read/infer overlap."""
    reader_name, _, mode = variant.partition(" ")
    with open_slide(path, reader_name) as reader:
        return analyse_slide(reader, predictor, progress=False, overlap=mode != "serial")


def model_only_seconds(predictor: Predictor, tiles: np.ndarray) -> float:
    start = time.perf_counter()
    for i in range(0, len(tiles), predictor.batch_size):
        predictor.predict_pixels(tiles[i : i + predictor.batch_size])
    return time.perf_counter() - start


def sample_tiles(shared_data: Path, n: int) -> np.ndarray:
    from PIL import Image

    files = sorted((shared_data / "pcam-subset" / "valid").rglob("*.jpg"))
    patches = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[:512]])
    return patches[np.arange(n) % len(patches)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--readers", default="tifffile,openslide")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    predictor = Predictor(args.model, device=args.device, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_slide(args.shared_data, Path(tmp), args.copies)
        readers = args.readers.split(",")
        variants = [readers[0], f"{readers[0]} serial", *readers[1:]]
        results: dict[str, SlideAnalysis] = {}
        model_s, tiles = float("inf"), np.zeros((0, 96, 96, 3), np.uint8)
        for _ in range(args.repeats):
            for variant in variants:
                run = slide_run(path, variant, predictor)
                if variant not in results or run.times.total_s < results[variant].times.total_s:
                    results[variant] = run
            if not len(tiles):
                tiles = sample_tiles(args.shared_data, int(run.scored.sum()))
                predictor.predict_pixels(tiles[: args.batch_size])  # warm-up
            model_s = min(model_s, model_only_seconds(predictor, tiles))
        n_tiles = len(tiles)
        model_rate = n_tiles / model_s
        size = path.stat().st_size
    import torch

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, device {predictor.device}, "
          f"model {predictor.spec.model_name}, batch {args.batch_size}, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    analysis = next(iter(results.values()))
    width, height = analysis.dimensions
    print(f"slide: {width}x{height} px level 0, {size / 1e6:.0f} MB, {n_tiles} tissue tiles\n")
    print("| reader | masking (s) | reading (s) | inference (s) | total (s) | reading tiles/s "
          "| inference tiles/s | slide tiles/s | model-only tiles/s | slide / model-only |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        t = result.times
        overall = n_tiles / t.total_s
        print(f"| {name} | {t.masking_s:.2f} | {t.reading_s:.2f} | {t.inference_s:.2f} | "
              f"{t.total_s:.2f} | {n_tiles / t.reading_s:,.0f} | {n_tiles / t.inference_s:,.0f} | "
              f"{overall:,.0f} | {model_rate:,.0f} | {overall / model_rate:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
