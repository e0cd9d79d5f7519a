"""Slide readers: every backend returns the same pixels, levels and resolution for one file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histodetect.errors import HistodetectError
from histodetect.slides.reader import open_slide, pick_level, read_downsampled
from slidefiles import LEVEL0_MPP, LayoutSlide, write_ome_pyramid, write_pyramid


def _openslide_or_skip(backend: str) -> None:
    if backend == "openslide":
        pytest.importorskip("openslide", reason="the slides extra (OpenSlide) is not installed")


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_pyramid_levels_resolution_and_pixels(
    tiff_slide: LayoutSlide, layout_canvas: tuple[np.ndarray, np.ndarray], backend: str
) -> None:
    _openslide_or_skip(backend)
    image, _ = layout_canvas
    with open_slide(tiff_slide.path, backend) as reader:
        assert reader.backend == backend
        height, width = image.shape[:2]
        assert reader.level_dimensions[:2] == ((2 * width, 2 * height), (width, height))
        assert reader.level_downsamples[:3] == pytest.approx((1.0, 2.0, 4.0))
        assert reader.mpp == pytest.approx(LEVEL0_MPP, rel=1e-6)
        region = reader.read_region(1, 300, 200, 333, 250)  # crosses 256 px tile edges
        np.testing.assert_array_equal(region, image[200:450, 300:633])
        level0 = reader.read_region(0, 601, 401, 10, 6)
        np.testing.assert_array_equal(level0[::2, ::2], image[200:203, 300:305])  # 2x enlarged


def test_outside_the_slide_is_white(tiff_slide: LayoutSlide) -> None:
    with open_slide(tiff_slide.path, "tifffile") as reader:
        width = reader.level_dimensions[2][0]
        corner = reader.read_region(2, width - 5, -3, 10, 8)
    assert (corner[:3] == 255).all() and (corner[:, 5:] == 255).all()
    assert not (corner[3:, :5] == 255).all()


def test_auto_picks_openslide_for_a_tiled_tiff_and_pillow_for_png(
    tiff_slide: LayoutSlide, png_slide: LayoutSlide
) -> None:
    pytest.importorskip("openslide")
    with open_slide(tiff_slide.path) as reader:
        assert reader.backend == "openslide"
    with open_slide(png_slide.path) as reader:
        assert reader.backend == "pil" and reader.mpp is None
        assert len(reader.level_dimensions) == 1


def test_ome_tiff_with_subifd_levels(
    layout_canvas: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    image, _ = layout_canvas
    path = write_ome_pyramid(tmp_path / "s.ome.tif", image[:500, :700], mpp=0.25)
    with open_slide(path, "tifffile") as reader:
        assert reader.level_dimensions == ((700, 500), (350, 250), (175, 125))
        assert reader.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(
            reader.read_region(0, 120, 100, 50, 40), image[100:140, 120:170]
        )
        expected = np.asarray(Image.fromarray(image[:500, :700]).reduce(2))[60:70, 10:30]
        np.testing.assert_array_equal(reader.read_region(1, 10, 60, 20, 10), expected)


def test_stripped_single_level_tiff(
    layout_canvas: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    import tifffile

    image, _ = layout_canvas
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, image, photometric="rgb", rowsperstrip=37,
                     resolution=(25400 / 0.5, 25400 / 0.5), resolutionunit="INCH")  # fmt: skip
    with open_slide(path, "tifffile") as reader:
        assert reader.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(reader.read_region(0, 5, 30, 90, 80), image[30:110, 5:95])


def test_downsampled_view_is_streamed_in_strips(tiff_slide: LayoutSlide) -> None:
    with open_slide(tiff_slide.path, "tifffile") as reader:
        whole = read_downsampled(reader, 6.0)
        strips = read_downsampled(reader, 6.0, max_bytes=20_000)  # many strips of a few rows
        width, height = reader.level_dimensions[0]
    assert whole.shape == (-(-height // 6), -(-width // 6), 3)
    assert np.abs(whole.astype(int) - strips.astype(int)).max() <= 1


def test_pick_level_prefers_the_coarsest_level_that_needs_no_enlarging() -> None:
    downsamples = (1.0, 2.0, 4.0, 8.0)
    assert pick_level(downsamples, 4.0) == 2
    assert pick_level(downsamples, 3.9) == 1
    assert pick_level(downsamples, 3.95) == 2  # within the 2% tolerance
    assert pick_level(downsamples, 0.5) == 0
    assert pick_level(downsamples, 100.0) == 3


def test_plain_tiff_photo_without_resolution_reports_none(tmp_path: Path) -> None:
    path = write_pyramid(tmp_path / "nores.tif", np.full((300, 400, 3), 200, np.uint8), None, 2)
    with open_slide(path, "tifffile") as reader:
        assert reader.mpp is None


def test_grey_slide_is_refused(tmp_path: Path) -> None:
    import tifffile

    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), tile=(16, 16))
    with pytest.raises(HistodetectError, match="not 8-bit interleaved RGB"):
        open_slide(path, "tifffile")
