"""The cell grid at the model's resolution, and tiles cut from large regions read block by block.

Each cell is `stride_px` model pixels square and is scored by the `patch_size_px` tile centred
on it: with the defaults (32 px cells, 96 px tiles) that is exactly the PCam label (tumour in
the centre 32 px, the rest is context). "Model pixels" are pixels at the resolution the model
was trained at (`model_mpp` microns each).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histodetect.errors import HistodetectError
from histodetect.slides.reader import SlideReader, pick_level

MAX_REGION_PX = 2048
"""Side, in pixels of the level read, of the regions tiles are cut from (12 MB of RGB)."""


@dataclass(frozen=True)
class Grid:
    """Where the cells of a slide lie and how they are read.

    Attributes:
        level: pyramid level the tiles are read from.
        level_downsample: level-0 pixels per pixel of that level.
        scale: pixels of that level per model pixel (1.0: read as is; > 1: shrunk).
        slide_mpp: microns per level-0 pixel.
        model_mpp: microns per model pixel.
        stride_px: cell side in model pixels.
        patch_size_px: tile side in model pixels.
        n_rows, n_cols: cells down and across.
    """

    level: int
    level_downsample: float
    scale: float
    slide_mpp: float
    model_mpp: float
    stride_px: int
    patch_size_px: int
    n_rows: int
    n_cols: int

    @property
    def level0_per_model_px(self) -> float:
        """Level-0 pixels per model pixel, as tiles are read: the level's downsample times its
        resampling (model_mpp / slide_mpp, except where a scale within 0.1% of 1 is read
        as is: the coordinates then drifted from the pixels read, 87 px across 100,000)."""
        return self.level_downsample * self.scale

    @property
    def margin_px(self) -> int:
        """Context on each side of a cell inside its tile, in model pixels."""
        return (self.patch_size_px - self.stride_px) // 2

    @property
    def cell_area_mm2(self) -> float:
        """Area of one cell in mm²."""
        return (self.stride_px * self.model_mpp / 1000.0) ** 2

    def tile_boxes(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Level-0 (x, y, width, height) of the tiles of cells (rows, cols), int64 (n, 4)."""
        f = self.level0_per_model_px
        x = np.rint((cols * self.stride_px - self.margin_px) * f)
        y = np.rint((rows * self.stride_px - self.margin_px) * f)
        size = np.full_like(x, round(self.patch_size_px * f))
        return np.stack([x, y, size, size], axis=1).astype(np.int64)


@dataclass(frozen=True)
class TileBatch:
    """Tiles and the cells they score: rows, cols int64 (n,), pixels uint8 (n, S, S, 3)."""

    rows: np.ndarray
    cols: np.ndarray
    pixels: np.ndarray


def check_stride(stride_px: int, patch_size_px: int) -> None:
    """Refuse a --stride-px outside 1..tile size or of the other parity than the tile.

    Raises:
        HistodetectError: naming the option and the values it takes.
    """
    if not 1 <= stride_px <= patch_size_px or (patch_size_px - stride_px) % 2:
        raise HistodetectError(
            f"--stride-px must lie in 1..{patch_size_px} and differ from the {patch_size_px} px "
            f"tile by an even number (so cells are centred in tiles), got {stride_px}."
        )


MAX_UPSAMPLING = 4.0
"""A slide coarser than the model by more than this (a 2.5x scan for a 10x model) is refused:
the detail is not there, and a DPI tag taken for microns asked for 87x and millions of cells."""


MAX_CELLS = 10_000_000
"""Most cells of one slide's grid: a 100,000 x 80,000 px slide at 0.25 µm/px has 0.5 M at the
default stride of 32 and 132 M at 2 (its tissue mask alone would need some 25 GB)."""


def plan_grid(
    reader: SlideReader,
    slide_mpp: float,
    model_mpp: float,
    stride_px: int,
    patch_size_px: int,
    *,
    mpp_source: str = "metadata",
) -> Grid:
    """The cell grid of a slide, read from the level nearest the model's resolution
    (`mpp_source`: where `slide_mpp` came from, "metadata" or "--mpp").

    Raises:
        HistodetectError: an unusable --stride-px, or a slide smaller than one cell.
    """
    check_stride(stride_px, patch_size_px)
    f = model_mpp / slide_mpp
    _check_not_too_coarse(reader.path, slide_mpp, model_mpp, mpp_source)
    level = pick_level(reader.level_downsamples, f)
    downsample = reader.level_downsamples[level]
    scale = f / downsample
    width0, height0 = reader.level_dimensions[0]
    n_cols, n_rows = int(width0 / f // stride_px), int(height0 / f // stride_px)
    if n_rows < 1 or n_cols < 1:
        raise HistodetectError(
            f"{reader.path} ({width0}x{height0} px at {slide_mpp:g} µm/px) is smaller than one "
            f"{stride_px} px cell at the model's {model_mpp:g} µm/px; check --mpp."
        )
    if n_rows * n_cols > MAX_CELLS:
        raise HistodetectError(
            f"--stride-px {stride_px} cuts {reader.path} into {n_rows * n_cols:,} cells; one run "
            f"analyses at most {MAX_CELLS:,}: give a larger --stride-px (each doubling quarters "
            "the count)."
        )
    scale = 1.0 if abs(scale - 1.0) < 1e-3 else scale
    return Grid(
        level, downsample, scale, slide_mpp, model_mpp, stride_px, patch_size_px, n_rows, n_cols
    )


def read_model_region(
    reader: SlideReader, grid: Grid, x: int, y: int, width: int, height: int
) -> np.ndarray:
    """uint8 (height, width, 3) pixels at the model's resolution; (x, y) in model pixels."""
    if grid.scale == 1.0:
        return reader.read_region(grid.level, x, y, width, height)
    from PIL import Image

    left, top = x * grid.scale, y * grid.scale
    right, bottom = (x + width) * grid.scale, (y + height) * grid.scale
    x0, y0 = math.floor(left), math.floor(top)
    pixels = reader.read_region(grid.level, x0, y0, math.ceil(right) - x0, math.ceil(bottom) - y0)
    resample = Image.Resampling.BOX if grid.scale > 1 else Image.Resampling.BICUBIC
    box = (left - x0, top - y0, right - x0, bottom - y0)
    return np.asarray(Image.fromarray(pixels).resize((width, height), resample, box))


def block_cells(grid: Grid) -> int:
    """Cells per side of the blocks read at once, so that a block is about `MAX_REGION_PX`."""
    model_px = MAX_REGION_PX / max(grid.scale, 1.0)
    return max(1, int((model_px - 2 * grid.margin_px) // grid.stride_px))


def iter_block_tiles(
    reader: SlideReader, grid: Grid, selected: np.ndarray, max_tiles: int
) -> Iterator[TileBatch]:
    """Tiles of the selected cells, block by block in row-major order, at most `max_tiles` each.

    Args:
        selected: bool (n_rows, n_cols), the cells to score (tissue).
    """
    side, stride, patch = block_cells(grid), grid.stride_px, grid.patch_size_px
    for row0 in range(0, grid.n_rows, side):
        for col0 in range(0, grid.n_cols, side):
            rows, cols = np.nonzero(selected[row0 : row0 + side, col0 : col0 + side])
            if not len(rows):
                continue
            n_down, n_across = rows.max() + 1, cols.max() + 1
            region = read_model_region(
                reader,
                grid,
                col0 * stride - grid.margin_px,
                row0 * stride - grid.margin_px,
                n_across * stride + patch - stride,
                n_down * stride + patch - stride,
            )
            windows = np.lib.stride_tricks.sliding_window_view(region, (patch, patch, 3))
            windows = windows[::stride, ::stride, 0]  # (n_down, n_across, patch, patch, 3) view
            for start in range(0, len(rows), max_tiles):
                r, c = rows[start : start + max_tiles], cols[start : start + max_tiles]
                yield TileBatch(r + row0, c + col0, np.ascontiguousarray(windows[r, c]))


def rebatch(batches: Iterator[TileBatch], batch_size: int) -> Iterator[TileBatch]:
    """The same tiles in order, regrouped into batches of exactly `batch_size` (the last fewer)."""
    pending: list[TileBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += len(batch.rows)
        while count >= batch_size:
            merged = _concat(pending)
            yield TileBatch(*(a[:batch_size] for a in (merged.rows, merged.cols, merged.pixels)))
            rest = TileBatch(*(a[batch_size:] for a in (merged.rows, merged.cols, merged.pixels)))
            pending, count = [rest], count - batch_size
    if count:
        yield _concat(pending)


def _concat(batches: list[TileBatch]) -> TileBatch:
    if len(batches) == 1:
        return batches[0]
    return TileBatch(
        np.concatenate([b.rows for b in batches]),
        np.concatenate([b.cols for b in batches]),
        np.concatenate([b.pixels for b in batches]),
    )


def _check_not_too_coarse(path: Path, slide_mpp: float, model_mpp: float, source: str) -> None:
    """Refuse a resolution whose tiles would be blown up more than MAX_UPSAMPLING times,
    naming where it came from (a --mpp given is the user's number, not the file's)."""
    times = slide_mpp / model_mpp
    if times <= MAX_UPSAMPLING:
        return
    if source == "--mpp":
        raise HistodetectError(
            f"--mpp {slide_mpp:g} is {times:.0f}x coarser than the model's {model_mpp:g} "
            f"µm/px: {path}'s tiles would be blown up {times:.0f}x; give the scanner's "
            "resolution (about 0.25 at 40x, 0.5 at 20x)."
        )
    raise HistodetectError(
        f"{path} records {slide_mpp:g} µm/px, {times:.0f}x coarser than the model's "
        f"{model_mpp:g} µm/px: its tiles would be blown up {times:.0f}x (a print resolution "
        "such as 300 dpi reads as 84.7 µm/px); pass --mpp with the scanner's resolution."
    )
