"""Tissue mask and tiling on the layout slide: glass excluded, tiles centred on their cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histodetect.errors import HistodetectError
from histodetect.slides.reader import open_slide
from histodetect.slides.tiling import (
    TileBatch,
    iter_block_tiles,
    plan_grid,
    read_model_region,
    rebatch,
)
from histodetect.slides.tissue import cell_fractions, otsu_threshold, tissue_mask
from slidefiles import PATCH_PX, LayoutSlide, write_pyramid


def test_otsu_splits_two_populations() -> None:
    values = np.concatenate([np.full(500, 10.0), np.full(300, 120.0)])
    assert 10 <= otsu_threshold(values) < 120


def test_mask_keeps_tissue_and_drops_glass_and_specks(
    layout_canvas: tuple[np.ndarray, np.ndarray],
) -> None:
    image, _ = layout_canvas
    small = np.asarray(Image.fromarray(image).reduce(8))  # 4 px per 32 px cell
    small = small.copy()
    small[2, 2] = (150, 40, 120)  # a purple speck of dust on the glass
    mask = tissue_mask(small)
    margin = 2 * PATCH_PX // 8
    glass = np.ones(mask.shape, dtype=bool)
    glass[margin:-margin, margin:-margin] = False
    assert not mask[glass].any()
    assert mask[~glass].mean() > 0.6  # PCam patches hold some white (fat, lumen) too


def test_blank_glass_has_no_tissue() -> None:
    rng = np.random.default_rng(0)
    glass = rng.integers(236, 246, size=(200, 300, 3), dtype=np.uint8)
    assert not tissue_mask(glass).any()


def test_cell_fractions_average_blocks() -> None:
    mask = np.zeros((8, 12), dtype=bool)
    mask[:4, :4] = True
    mask[4:, 4:6] = True
    np.testing.assert_allclose(cell_fractions(mask, 4, 2, 3), [[1, 0, 0], [0, 0.5, 0]])


def test_grid_reads_the_level_at_the_model_resolution(tiff_slide: LayoutSlide) -> None:
    with open_slide(tiff_slide.path, "tifffile") as reader:
        grid = plan_grid(reader, reader.mpp or 0, 0.972, 32, 96)
        assert (grid.level, grid.scale) == (1, 1.0)
        assert (grid.n_rows, grid.n_cols) == tiff_slide.tissue.shape
        coarse = plan_grid(reader, reader.mpp or 0, 0.972 * 3, 32, 96)  # level 2, shrunk 1.5x
        assert (coarse.level, coarse.scale) == (2, pytest.approx(1.5))


def test_centre_cell_tiles_are_the_patches(
    tiff_slide: LayoutSlide, layout_canvas: tuple[np.ndarray, np.ndarray]
) -> None:
    image, _ = layout_canvas
    with open_slide(tiff_slide.path, "tifffile") as reader:
        grid = plan_grid(reader, reader.mpp or 0, 0.972, 32, 96)
        batches = list(rebatch(iter_block_tiles(reader, grid, tiff_slide.centre, 7), 10))
    assert [len(b.rows) for b in batches[:-1]] == [10] * (len(batches) - 1)
    rows = np.concatenate([b.rows for b in batches])
    cols = np.concatenate([b.cols for b in batches])
    pixels = np.concatenate([b.pixels for b in batches])
    assert len(rows) == tiff_slide.centre.sum() and tiff_slide.centre[rows, cols].all()
    for r, c, tile in zip(rows, cols, pixels, strict=True):
        top, left = (r // 3) * PATCH_PX, (c // 3) * PATCH_PX
        np.testing.assert_array_equal(tile, image[top : top + PATCH_PX, left : left + PATCH_PX])
    boxes = grid.tile_boxes(rows[:1], cols[:1])
    assert boxes.tolist() == [[(cols[0] // 3) * 192, (rows[0] // 3) * 192, 192, 192]]


def test_resampled_region_matches_a_resized_image(
    tiff_slide: LayoutSlide, layout_canvas: tuple[np.ndarray, np.ndarray]
) -> None:
    image, _ = layout_canvas
    with open_slide(tiff_slide.path, "tifffile") as reader:
        grid = plan_grid(reader, reader.mpp or 0, 0.972 * 1.5, 32, 96)  # level 1 shrunk 1.5x
        region = read_model_region(reader, grid, 100, 60, 200, 120)
    expected = np.asarray(Image.fromarray(image[90:270, 150:450]).resize((200, 120), Image.BOX))
    assert np.abs(region.astype(int) - expected.astype(int)).mean() < 1.0


def test_rebatch_keeps_order() -> None:
    def batch(start: int, n: int) -> TileBatch:
        ids = np.arange(start, start + n)
        return TileBatch(
            ids, -ids, np.zeros((n, 2, 2, 3), np.uint8) + ids[:, None, None, None].astype(np.uint8)
        )

    out = list(rebatch(iter([batch(0, 3), batch(3, 9), batch(12, 1)]), 4))
    assert [len(b.rows) for b in out] == [4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([b.rows for b in out]), np.arange(13))
    np.testing.assert_array_equal(
        np.concatenate([b.pixels[:, 0, 0, 0] for b in out]), np.arange(13)
    )


@pytest.mark.parametrize("stride", [0, 97, 31])
def test_bad_stride_is_refused(tmp_path: Path, stride: int) -> None:
    path = write_pyramid(tmp_path / "s.tif", np.full((200, 200, 3), 200, np.uint8), 0.5, 1)
    with (
        open_slide(path, "tifffile") as reader,
        pytest.raises(HistodetectError, match="--stride-px"),
    ):
        plan_grid(reader, 0.5, 0.972, stride, 96)


def test_a_slide_far_coarser_than_the_model_is_refused(tmp_path: Path) -> None:
    """From a review: a TIFF tagged 300 dpi read as 84.7 µm/px; the slide was to be blown up
    87x into millions of cells, and 4 GB were in use after 12 s, with no word of --mpp."""
    path = write_pyramid(tmp_path / "s.tif", np.full((200, 200, 3), 200, np.uint8), 0.5, 1)
    with open_slide(path, "tifffile") as reader:
        with pytest.raises(HistodetectError, match=r"records 84.7 µm/px, 87x coarser.*--mpp"):
            plan_grid(reader, 84.7, 0.972, 32, 96)
        plan_grid(reader, 0.972 * 3.9, 0.972, 32, 96)  # a 2.5x scan is still read


class _Reader:
    """A stub slide: 100,000 px wide, levels 1 and 4 (the level-4 read at 0.1% off scale)."""

    path = Path("stub.svs")
    level_downsamples = (1.0, 4.0)
    level_dimensions = ((100_000, 400), (25_000, 100))


def test_level0_coordinates_follow_the_pixels_read_when_the_scale_is_rounded() -> None:
    """From a review: a scale within 0.1% of 1 is read as is, but tiles.csv and the regions
    used model_mpp / slide_mpp: the last tile was listed 87 px from where it was read."""
    grid = plan_grid(_Reader(), 0.25, 0.25 * 4.0035, 32, 96)  # type: ignore[arg-type]
    assert grid.level == 1 and grid.scale == 1.0 and grid.level0_per_model_px == 4.0
    last = grid.tile_boxes(np.array([0]), np.array([grid.n_cols - 1]))[0]
    read_at = ((grid.n_cols - 1) * grid.stride_px - grid.margin_px) * grid.level_downsample
    assert last[0] == read_at


def test_a_grid_of_too_many_cells_is_refused_and_the_mask_is_never_finer_than_a_cell() -> None:
    """From a review: --stride-px 2 on a 100,000 px slide planned 132 M cells and a tissue mask
    finer than the slide itself (MIN_MASK_PX_PER_CELL = 4 mask pixels per 2 px cell)."""
    from histodetect.slides.analysis import mask_px_per_cell

    class Big(_Reader):
        level_downsamples = (1.0, 4.0)
        level_dimensions = ((100_000, 80_000), (25_000, 20_000))

    with pytest.raises(HistodetectError, match=r"--stride-px 2 cuts stub.svs into 1.*cells"):
        plan_grid(Big(), 0.25, 0.972, 2, 96)  # type: ignore[arg-type]
    grid = plan_grid(Big(), 0.25, 0.972, 8, 96)  # type: ignore[arg-type]
    assert grid.n_rows * grid.n_cols > 5_000_000
    small = plan_grid(_Reader(), 0.25, 0.972, 2, 96)  # type: ignore[arg-type]
    assert mask_px_per_cell(small) == 2
