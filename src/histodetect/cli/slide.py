"""`histodetect slide`: tumour heatmaps, regions and a summary for whole-slide images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from histodetect.cli import options
from histodetect.slides import BACKENDS

HELP = "tumour heatmap, regions (GeoJSON), summary and report for whole-slide images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "slides",
        nargs="+",
        type=options.path_value,
        metavar="SLIDE",
        help="slide files: tiled pyramidal TIFF/OME-TIFF, OpenSlide formats (.svs, .ndpi, "
        ".mrxs, ...; needs the slides extra) or PNG/JPEG",
    )
    options.add_out(parser, "folder for the results, one sub-folder per slide")
    parser.add_argument(
        "--model",
        type=options.path_value,
        help="model.pt, model.onnx or run folder (default, or `bundled`: the bundled model)",
    )
    parser.add_argument(
        "--mpp",
        type=float,
        help="microns per level-0 pixel of the slides (needed when a slide records none; "
        "overrides what they record)",
    )
    parser.add_argument(
        "--stride-px",
        type=int,
        default=32,
        help="cell side in pixels at the model's resolution; each cell is scored by the tile "
        "centred on it (default 32: PCam's centre label)",
    )
    parser.add_argument(
        "--shard", metavar="I/N", help="process only slide I, I+N, I+2N, ... (1 <= I <= N)"
    )
    parser.add_argument(
        "--reader",
        choices=BACKENDS,
        default="auto",
        help="slide reader (default auto: OpenSlide when it recognises the file)",
    )
    options.add_inference(parser)
    options.add_overwrite(parser)
    options.add_progress(parser)


def run(args: argparse.Namespace) -> int:
    from histodetect.inference.predictor import Predictor
    from histodetect.slides.runner import SlideOptions, parse_shard, run_slides, shard_slides

    slides = shard_slides(args.slides, parse_shard(args.shard))
    if not slides:
        print(f"Shard {args.shard} has no slides ({len(args.slides)} given); nothing to do.")
        return 0
    slide_options = SlideOptions(
        args.stride_px, args.mpp, args.reader, args.overwrite, args.progress
    )
    predictor = Predictor(
        args.model,
        tta=args.tta,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
    )
    outcome = run_slides(slides, args.out, predictor, slide_options, on_slide=_said)
    print(
        f"{len(outcome.done)} slides done, {len(outcome.skipped)} skipped, "
        f"{len(outcome.failed)} failed."
    )
    return 2 if outcome.failed else 0


def _said(folder: Path, summary: dict[str, Any] | None, made_with: list[str]) -> None:
    """One line per slide as it is done (flushed: a pipe would hold it until the end, and a
    run interrupted later lost the lines of the slides it had finished)."""
    if summary is None:
        print(f"{folder}: already done, skipped (--overwrite redoes it).", flush=True)
        if made_with:
            print(
                f"note: {folder} was made with {', '.join(made_with)}, not what this run asks; "
                "--overwrite redoes it so.",
                file=sys.stderr,
            )
        return
    print(
        f"{summary['folder']}: {summary['n_tiles']} tiles, max probability "
        f"{summary['max_probability']:.3f}, tumour {summary['tumour_area_mm2']:.3f} mm² "
        f"({100 * summary['tumour_fraction_of_tissue']:.1f}% of tissue) in "
        f"{summary['n_regions']} regions, {summary['tiles_per_s']['overall']} tiles/s.",
        flush=True,
    )
