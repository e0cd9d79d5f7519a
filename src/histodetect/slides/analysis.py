"""One slide through the model: resolution, tissue mask, tiles, calibrated probability per cell.

Inference goes through `Predictor.predict_pixels`, the entry point `predict` uses (the model's
own preprocessing from its ModelSpec, optional TTA, calibrated probabilities).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histodetect.errors import HistodetectError
from histodetect.slides.prefetch import prefetch
from histodetect.slides.reader import SlideReader, plausible_mpp, read_downsampled
from histodetect.slides.tiling import Grid, TileBatch, iter_block_tiles, plan_grid, rebatch
from histodetect.slides.tissue import cell_fractions, tissue_mask

if TYPE_CHECKING:
    from histodetect.inference.predictor import Predictor
    from histodetect.models.spec import ModelSpec

MIN_MASK_PX_PER_CELL = 4
"""Tissue-mask pixels along one cell side, at least (8 model px each with 32 px cells)."""
THUMBNAIL_SIDE_PX = 1024
"""Small slides get a finer mask (up to one pixel per model pixel), so that the thumbnail and
overlay are at least about this wide."""
MIN_TISSUE_FRACTION = 0.25
"""A cell is scored when at least this fraction of it is tissue; the rest never reaches the model."""


def model_mpp(spec: ModelSpec) -> float:
    """Microns per pixel the model was trained at (`ModelSpec.mpp`; PCam's for old models)."""
    return spec.mpp


@dataclass
class StageTimes:
    """Seconds spent per stage of one slide.

    Reading (decoding, resampling, cutting tiles) runs in a background thread while the model
    scores the previous batch, so reading_s + inference_s may exceed total_s.
    """

    masking_s: float = 0.0
    reading_s: float = 0.0
    inference_s: float = 0.0
    total_s: float = 0.0


@dataclass
class SlideAnalysis:
    """Everything computed for one slide, before anything is written.

    Attributes:
        path, backend: the slide and the reader backend used.
        dimensions: level-0 (width, height) in pixels.
        mpp_source: "metadata" or "--mpp".
        grid: the cell grid (resolution, level read, cell and tile sizes).
        thumbnail: uint8 (h, w, 3) image of the whole slide at the tissue-mask resolution.
        mask: bool (h, w) tissue mask, `mask_px_per_cell` pixels per cell side.
        mask_px_per_cell: thumbnail and mask pixels along one cell side.
        tissue_fraction: float32 (n_rows, n_cols) tissue fraction per cell.
        probabilities: float32 (n_rows, n_cols) calibrated tumour probability; NaN where the
            cell was not scored (background).
        times: seconds per stage.
    """

    path: Path
    backend: str
    dimensions: tuple[int, int]
    mpp_source: str
    grid: Grid
    thumbnail: np.ndarray
    mask: np.ndarray
    mask_px_per_cell: int
    tissue_fraction: np.ndarray
    probabilities: np.ndarray
    times: StageTimes = field(default_factory=StageTimes)

    @property
    def scored(self) -> np.ndarray:
        """bool (n_rows, n_cols): the cells that were scored."""
        return ~np.isnan(self.probabilities)


def resolve_slide_mpp(reader: SlideReader, override: float | None) -> tuple[float, str]:
    """Microns per level-0 pixel and where it came from ("--mpp" wins over the metadata).

    Raises:
        HistodetectError: --mpp is not a microscope resolution, or the slide records none and
            no --mpp was given.
    """
    if override is not None:
        if plausible_mpp(override) is None:
            raise HistodetectError(
                f"--mpp {override} is not a microscope resolution (0.01-100 µm/px)."
            )
        return float(override), "--mpp"
    if reader.mpp is None:
        raise HistodetectError(
            f"{reader.path} records no resolution (microns per pixel); pass --mpp, e.g. "
            "--mpp 0.25 for a 40x scan or 0.5 for 20x."
        )
    return reader.mpp, "metadata"


def analyse_slide(
    reader: SlideReader,
    predictor: Predictor,
    *,
    stride_px: int = 32,
    mpp: float | None = None,
    progress: bool = True,
    overlap: bool = True,
) -> SlideAnalysis:
    """Score every tissue cell of a slide.

    Args:
        stride_px: cell side in model pixels (the tile is the model's patch, centred on it).
        mpp: microns per level-0 pixel, overriding the slide's metadata.
        overlap: read the next tiles in a background thread while the model scores (False:
            one after the other, for benchmarks).

    Raises:
        HistodetectError: no resolution, no tissue, or a damaged file; nothing is written.
    """
    start = time.perf_counter()
    slide_mpp, source = resolve_slide_mpp(reader, mpp)
    spec = predictor.spec
    grid = plan_grid(
        reader, slide_mpp, model_mpp(spec), stride_px, spec.patch_size_px,
        mpp_source=source,
    )  # fmt: skip
    times = StageTimes()
    k = mask_px_per_cell(grid)
    thumbnail, mask, fractions = mask_cells(reader, grid, k)
    times.masking_s = time.perf_counter() - start
    selected = fractions >= MIN_TISSUE_FRACTION
    if not selected.any():
        raise HistodetectError(
            f"{reader.path} shows no tissue (its tissue mask is empty); check that it is the "
            "right slide, or its --mpp."
        )
    probabilities = _score_cells(reader, grid, selected, predictor, times, progress, overlap)
    times.total_s = time.perf_counter() - start
    return SlideAnalysis(
        reader.path, reader.backend, reader.level_dimensions[0], source, grid,
        thumbnail, mask, k, fractions, probabilities, times,
    )  # fmt: skip


def mask_px_per_cell(grid: Grid) -> int:
    """Mask pixels per cell side: `MIN_MASK_PX_PER_CELL`, more for small slides, and never
    more than the cell's model pixels (at --stride-px 2 the mask was finer than the slide)."""
    wanted = -(-THUMBNAIL_SIDE_PX // max(grid.n_rows, grid.n_cols))
    return min(max(MIN_MASK_PX_PER_CELL, wanted), grid.stride_px)


def mask_cells(
    reader: SlideReader, grid: Grid, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thumbnail at `k` pixels per cell side, tissue mask, and tissue fraction per cell."""
    thumbnail = read_downsampled(reader, grid.level0_per_model_px * grid.stride_px / k)
    mask = tissue_mask(thumbnail, min_object_px=k * k, max_hole_px=k * k)
    return thumbnail, mask, cell_fractions(mask, k, grid.n_rows, grid.n_cols)


def _score_cells(
    reader: SlideReader,
    grid: Grid,
    selected: np.ndarray,
    predictor: Predictor,
    times: StageTimes,
    progress: bool,
    overlap: bool,
) -> np.ndarray:
    """float32 (n_rows, n_cols) probabilities of the selected cells, NaN elsewhere."""
    from tqdm import tqdm

    probabilities = np.full(selected.shape, np.nan, dtype=np.float32)
    batch_size = predictor.batch_size
    tiles = _timed(rebatch(iter_block_tiles(reader, grid, selected, batch_size), batch_size), times)
    total = int(selected.sum())
    batches = prefetch(tiles) if overlap else tiles
    bar = tqdm(total=total, unit="tile", desc=reader.path.name, disable=not progress)
    with contextlib.closing(batches), bar:  # closing stops the reading thread on any error
        for batch in batches:
            start = time.perf_counter()
            probabilities[batch.rows, batch.cols] = predictor.predict_pixels(batch.pixels)
            times.inference_s += time.perf_counter() - start
            bar.update(len(batch.rows))
    return probabilities


def _timed(batches: Iterator[TileBatch], times: StageTimes) -> Generator[TileBatch, None, None]:
    """`batches`, adding the time spent producing each one to `times.reading_s`."""
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        times.reading_s += time.perf_counter() - start
        if batch is None:
            return
        yield batch
