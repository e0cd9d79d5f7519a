"""Tissue mask at low resolution: Otsu on colour saturation, specks and small holes removed.

Glass is grey or white (saturation near 0) and H&E tissue is pink or purple, so saturation
separates them across stains and scanners better than brightness does. Otsu picks the split
per slide; it is held within `THRESHOLD_RANGE` because saturation is not bimodal enough on its
own: a slide that is nearly all glass would be split along noise, and one with pale (fat,
oedema) and dense (lymphocytes) tissue would be split between the two kinds of tissue.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

THRESHOLD_RANGE = (12.0, 25.0)
"""Saturation (0-255) bounds of the tissue threshold: empty glass lies below about 10 (grey
with scanner noise); pale pink tissue in PCam patches starts at about 25 (CLAM's fixed
threshold for Camelyon16 is 8 after a median blur)."""


def saturation(pixels: np.ndarray) -> np.ndarray:
    """HSV saturation, float32 (h, w) in 0-255, of uint8 (h, w, 3) RGB pixels."""
    rgb = pixels.astype(np.float32)
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    return np.where(high > 0, (high - low) * 255.0 / np.maximum(high, 1.0), 0.0).astype(np.float32)


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of values in 0-255: maximises the between-class variance of a 256-bin
    histogram. Returns the upper edge of the lower class."""
    counts = np.bincount(np.clip(values, 0, 255).astype(np.int64).ravel(), minlength=256)
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(counts).astype(np.float64)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * levels)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(np.argmax(between))


def tissue_mask(pixels: np.ndarray, min_object_px: int = 16, max_hole_px: int = 16) -> np.ndarray:
    """Boolean (h, w) mask of tissue in a low-resolution RGB image of a slide.

    Args:
        pixels: uint8 (h, w, 3) thumbnail, white outside the slide.
        min_object_px: tissue pieces smaller than this many pixels are dropped (dust, specks).
        max_hole_px: holes in tissue smaller than this many pixels are filled.
    """
    sat = ndimage.median_filter(saturation(pixels), size=3)  # smooths without bleeding at edges
    threshold = float(np.clip(otsu_threshold(sat), *THRESHOLD_RANGE))
    mask = sat > threshold
    mask = _drop_small(mask, min_object_px)
    return ~_drop_small(~mask, max_hole_px)


def _drop_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    """`mask` without its 8-connected components of fewer than `min_px` pixels."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def cell_fractions(mask: np.ndarray, px_per_cell: int, n_rows: int, n_cols: int) -> np.ndarray:
    """Fraction of tissue in each grid cell, float32 (n_rows, n_cols).

    Args:
        mask: tissue mask with `px_per_cell` x `px_per_cell` mask pixels per cell, cell (0, 0)
            at the top left; at least n_rows * px_per_cell by n_cols * px_per_cell.
    """
    k = px_per_cell
    cells = mask[: n_rows * k, : n_cols * k].reshape(n_rows, k, n_cols, k)
    return cells.mean(axis=(1, 3), dtype=np.float32)
