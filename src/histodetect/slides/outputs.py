"""A slide's output folder: tiles.csv, heatmap/overlay/mask PNGs, regions.geojson, summary.json
and report.html, written into a hidden temporary folder and renamed into place when complete
(`histodetect.atomic`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from histodetect import __version__
from histodetect.atomic import atomic_dir
from histodetect.data.store import foreign_entries
from histodetect.slides.analysis import SlideAnalysis
from histodetect.slides.heatmap import heatmap_rgba, mask_image, overlay_image
from histodetect.slides.regions import Region, regions_geojson
from histodetect.slides.report import render_report

SUMMARY_FILE = "summary.json"
"""A folder with it is a finished slide result (skipped on a rerun)."""
SLIDE_OUTPUTS = (
    "tiles.csv", "heatmap.png", "overlay.png", "mask.png", "regions.geojson", "report.html",
    SUMMARY_FILE,
)  # fmt: skip
"""Every file `write_slide_outputs` writes: --overwrite replaces a folder holding only these."""
TILES_HEADER = ("x", "y", "width", "height", "probability", "row", "col", "tissue_fraction")


def slide_folder_name(path: Path) -> str:
    """Output folder name of a slide: its file name without the suffix (and without .ome)."""
    return path.stem.removesuffix(".ome")


def finished_summary(folder: Path) -> dict[str, Any] | None:
    """The summary of a complete slide result in `folder` (every file `write_slide_outputs`
    writes, and a summary.json that reads as the one it writes), else None.

    A summary.json alone was enough: a user's own file of that name let --overwrite replace
    their folder, and a damaged result (summary emptied, heatmap gone) was skipped as done.
    """
    if not all((folder / name).is_file() for name in SLIDE_OUTPUTS):
        return None
    return _own_summary(folder)


def _own_summary(folder: Path) -> dict[str, Any] | None:
    """`folder`'s summary.json when it reads as the one `write_slide_outputs` writes."""
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if isinstance(summary, dict) and {"slide", "n_tiles", "histodetect_version"} <= set(summary):
        return summary
    return None


def is_finished(folder: Path) -> bool:
    """True when `folder` holds a complete slide result (see `finished_summary`)."""
    return finished_summary(folder) is not None


def is_own_result(folder: Path) -> bool:
    """True when `folder` holds nothing but files `write_slide_outputs` writes and its
    summary.json or tiles.csv reads as ours: a finished result, or one with files since
    deleted or emptied, which --overwrite may replace (a user's folder holding a report.html of
    their own is not ours)."""
    if not folder.is_dir() or foreign_entries(folder, SLIDE_OUTPUTS):
        return False
    if _own_summary(folder) is not None:
        return True
    try:
        with (folder / "tiles.csv").open(encoding="utf-8") as f:
            return f.readline().rstrip("\n") == ",".join(TILES_HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def summarise(
    analysis: SlideAnalysis, regions: list[Region], model: dict[str, Any]
) -> dict[str, Any]:
    """Slide-level figures as JSON values: tumour burden, resolution, model, time per stage.

    Args:
        model: what identifies the model run (path, name, threshold, temperature, tta, device).
    """
    grid, times = analysis.grid, analysis.times
    n_tiles = int(analysis.scored.sum())

    def rate(seconds: float) -> float | None:
        return round(n_tiles / seconds, 1) if seconds > 0 else None

    return {
        "slide": str(analysis.path),
        "reader": analysis.backend,
        "dimensions_px": list(analysis.dimensions),
        "slide_mpp": grid.slide_mpp,
        "slide_mpp_source": analysis.mpp_source,
        "model_mpp": grid.model_mpp,
        "level_read": grid.level,
        "level_downsample": round(grid.level_downsample, 4),
        "resample_factor": round(grid.scale, 4),
        "tile_px": grid.patch_size_px,
        "stride_px": grid.stride_px,
        "grid_cells": [grid.n_rows, grid.n_cols],
        "n_tiles": n_tiles,
        **tumour_burden(analysis, regions, model["threshold"]),
        "model": model,
        "seconds": {k: round(v, 3) for k, v in vars(times).items()},
        "tiles_per_s": {
            "reading": rate(times.reading_s),
            "inference": rate(times.inference_s),
            "overall": rate(times.total_s),
        },
        "histodetect_version": __version__,
    }


def tumour_burden(
    analysis: SlideAnalysis, regions: list[Region], threshold: float
) -> dict[str, Any]:
    """Probabilities and areas: tumour cells are those at or above `threshold`; the tissue
    area counts the scored cells."""
    probs = analysis.probabilities[analysis.scored]
    cell_mm2 = analysis.grid.cell_area_mm2
    n_positive = int((probs >= threshold).sum())
    return {
        "max_probability": round(float(probs.max()), 6),
        "mean_probability": round(float(probs.mean()), 6),
        "threshold": threshold,
        "tumour_cells": n_positive,
        "tumour_area_mm2": round(n_positive * cell_mm2, 6),
        "tissue_area_mm2": round(probs.size * cell_mm2, 6),
        "tumour_fraction_of_tissue": round(n_positive / probs.size, 6),
        "n_regions": len(regions),
        "largest_region_mm2": round(regions[0].area_mm2, 6) if regions else 0.0,
    }


def write_slide_outputs(
    analysis: SlideAnalysis,
    regions: list[Region],
    summary: dict[str, Any],
    folder: Path,
) -> None:
    """Write every output of one slide to `folder`, replacing an older result only when done.

    Files go to a hidden temporary folder beside `folder`, renamed into place at the end; an
    interrupted run leaves nothing (or the previous result) behind.
    """
    with atomic_dir(folder, replace=is_own_result(folder)) as tmp:
        _write_files(analysis, regions, summary, tmp)


def _write_files(
    analysis: SlideAnalysis, regions: list[Region], summary: dict[str, Any], folder: Path
) -> None:
    heatmap = heatmap_rgba(analysis.probabilities)
    overlay = overlay_image(analysis.thumbnail, heatmap, analysis.mask_px_per_cell)
    write_tiles_csv(analysis, folder / "tiles.csv")
    save_png(folder / "heatmap.png", heatmap)
    save_png(folder / "overlay.png", overlay)
    save_png(folder / "mask.png", mask_image(analysis.mask))
    geojson = regions_geojson(regions)
    (folder / "regions.geojson").write_text(json.dumps(geojson) + "\n")
    # The thumbnail spans whole mask pixels, slightly more than the slide's level-0 size.
    grid = analysis.grid
    level0_per_px = grid.level0_per_model_px * grid.stride_px / analysis.mask_px_per_cell
    extent = (
        analysis.thumbnail.shape[1] * level0_per_px,
        analysis.thumbnail.shape[0] * level0_per_px,
    )
    html = render_report(summary, overlay, geojson, extent)
    (folder / "report.html").write_text(html, encoding="utf-8")
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")


def write_tiles_csv(analysis: SlideAnalysis, path: Path) -> None:
    """One row per scored tile: x,y,width,height (level-0 px, top-left), probability, then the
    cell's row, col and tissue fraction."""
    rows, cols = np.nonzero(analysis.scored)
    boxes = analysis.grid.tile_boxes(rows, cols)
    probs = analysis.probabilities[rows, cols]
    tissue = analysis.tissue_fraction[rows, cols]
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(TILES_HEADER)
        for box, p, r, c, t in zip(boxes.tolist(), probs.tolist(), rows.tolist(), cols.tolist(),
                                   tissue.tolist(), strict=True):  # fmt: skip
            writer.writerow([*box, f"{p:.6f}", r, c, f"{t:.3f}"])


def save_png(path: Path, pixels: np.ndarray) -> None:
    """Write uint8 (h, w), (h, w, 3) or (h, w, 4) pixels as PNG."""
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG", optimize=False)
