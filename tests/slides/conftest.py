"""Fixtures: the layout slide (see slidefiles.py) as a pyramidal TIFF and as a PNG, once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slidefiles import LEVEL0_MPP, LayoutSlide, canvas, layout, write_pyramid


@pytest.fixture(scope="session")
def layout_canvas(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    return canvas(shared_data)


@pytest.fixture(scope="session")
def tiff_slide(
    layout_canvas: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> LayoutSlide:
    """The layout as a 4-level pyramidal TIFF at 0.486 µm/px (level 1 = the patches as they are)."""
    image, labels = layout_canvas
    level0 = image.repeat(2, axis=0).repeat(2, axis=1)
    path = write_pyramid(tmp_path_factory.mktemp("slides") / "layout.tif", level0, LEVEL0_MPP)
    return layout(path, labels)


@pytest.fixture(scope="session")
def png_slide(
    layout_canvas: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> LayoutSlide:
    """The layout as a PNG at the model's resolution (no resolution metadata: needs --mpp)."""
    image, labels = layout_canvas
    path = tmp_path_factory.mktemp("slides") / "layout.png"
    Image.fromarray(image).save(path)
    return layout(path, labels)
