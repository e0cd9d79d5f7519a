"""Writing test slides from real PCam valid patches (imported by tests and benchmarks): a block
of tumour patches among normal ones, blank glass around, as a tiled multi-level pyramidal TIFF."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PATCH_PX = 96
GRID_ROWS, GRID_COLS = 10, 12
"""Patches down and across the tissue."""
MARGIN_PATCHES = 2
"""Blank glass around the tissue, in patches."""
TUMOUR_ROWS, TUMOUR_COLS = slice(2, 6), slice(6, 11)
"""The block of tumour patches inside the tissue grid (4 x 5 = 20 of 120)."""
LEVEL0_MPP = 0.486
"""Level 0 is the patches enlarged 2x, so level 1 is PCam's 0.972 µm/px exactly."""


@dataclass(frozen=True)
class LayoutSlide:
    """A slide file and its layout, one entry per 32 px cell at the model's resolution.

    Attributes:
        path: the slide file.
        tissue: bool (rows, cols), cells covered by a patch.
        tumour: bool (rows, cols), cells of tumour patches.
        centre: bool (rows, cols), the centre cell of each patch (whose tile is the patch).
    """

    path: Path
    tissue: np.ndarray
    tumour: np.ndarray
    centre: np.ndarray


def canvas(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Model-resolution RGB image of the layout, and the patch labels (GRID_ROWS, GRID_COLS)."""
    labels = np.zeros((GRID_ROWS, GRID_COLS), dtype=np.uint8)
    labels[TUMOUR_ROWS, TUMOUR_COLS] = 1
    valid = shared_data / "pcam-subset" / "valid"
    files = {c: sorted((valid / str(c)).glob("*.jpg")) for c in (0, 1)}
    taken = {0: 0, 1: 0}
    side = (np.array(labels.shape) + 2 * MARGIN_PATCHES) * PATCH_PX
    rng = np.random.default_rng(0)
    image = rng.integers(236, 246, size=(*side, 3), dtype=np.uint8)  # glass: pale grey, noisy
    for (row, col), label in np.ndenumerate(labels):
        path = files[int(label)][taken[int(label)] * 7]  # spread over the folder, deterministic
        taken[int(label)] += 1
        top, left = (row + MARGIN_PATCHES) * PATCH_PX, (col + MARGIN_PATCHES) * PATCH_PX
        image[top : top + PATCH_PX, left : left + PATCH_PX] = np.asarray(
            Image.open(path).convert("RGB")
        )
    return image, labels


def layout(path: Path, labels: np.ndarray) -> LayoutSlide:
    """Per-cell truth (3 x 3 cells per patch) of a slide written from `canvas`."""
    cells = np.kron(np.pad(labels.astype(int) + 1, MARGIN_PATCHES), np.ones((3, 3), dtype=int))
    centre = np.zeros_like(cells, dtype=bool)
    centre[1::3, 1::3] = True
    return LayoutSlide(path, cells > 0, cells == 2, centre & (cells > 0))


def write_pyramid(
    path: Path, level0: np.ndarray, mpp: float | None, n_levels: int = 4, tile: int = 256
) -> Path:
    """Tiled, deflate-compressed TIFF, each level half the last in the main IFD chain
    (Camelyon16 layout, which OpenSlide reads as generic-tiff), resolution in pixels per cm."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        for level in range(n_levels):
            pixels = np.asarray(
                Image.fromarray(level0).reduce(2**level) if level else level0, dtype=np.uint8
            )
            extra = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2**level)
                extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tif.write(pixels, tile=(tile, tile), photometric="rgb", compression="zlib",
                      subfiletype=1 if level else 0, **extra)  # fmt: skip
    return path


def write_ome_pyramid(path: Path, level0: np.ndarray, mpp: float, n_levels: int = 3) -> Path:
    """Tiled OME-TIFF with the reduced levels in SubIFDs and PhysicalSizeX in µm."""
    import tifffile

    with tifffile.TiffWriter(path, ome=True) as tif:
        meta = {"PhysicalSizeX": mpp, "PhysicalSizeY": mpp, "axes": "YXS"}
        tif.write(level0, tile=(128, 128), photometric="rgb", compression="zlib",
                  subifds=n_levels - 1, metadata=meta)  # fmt: skip
        for level in range(1, n_levels):
            reduced = np.asarray(Image.fromarray(level0).reduce(2**level))
            tif.write(reduced, tile=(128, 128), photometric="rgb", compression="zlib",
                      subfiletype=1)  # fmt: skip
    return path
