"""Images of a slide's result: the heatmap (one pixel per cell), the overlay, the tissue mask."""

from __future__ import annotations

import numpy as np

COLOUR_MAP = "inferno"
"""Perceptually uniform (matplotlib): dark purple = 0, yellow = 1, readable in grey scale too."""
OVERLAY_ALPHA = 0.55
"""Weight of the heatmap over the thumbnail in the overlay."""
MAX_OVERLAY_SIDE_PX = 2048


def heatmap_rgba(probabilities: np.ndarray) -> np.ndarray:
    """uint8 (n_rows, n_cols, 4): probabilities through `COLOUR_MAP`, transparent where NaN."""
    from matplotlib import colormaps

    scored = ~np.isnan(probabilities)
    rgba = colormaps[COLOUR_MAP](np.nan_to_num(probabilities), bytes=True)
    rgba[..., 3] = np.where(scored, 255, 0)
    return rgba


def colour_stops(n: int = 11) -> list[str]:
    """`n` CSS colours of `COLOUR_MAP` from 0 to 1, for a legend."""
    from matplotlib import colormaps

    rgba = colormaps[COLOUR_MAP](np.linspace(0.0, 1.0, n), bytes=True)
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b, _ in rgba.tolist()]


def overlay_image(thumbnail: np.ndarray, heatmap: np.ndarray, px_per_cell: int) -> np.ndarray:
    """uint8 (h, w, 3): the heatmap blended over the thumbnail, at most `MAX_OVERLAY_SIDE_PX`.

    Args:
        thumbnail: uint8 (H, W, 3) whole slide with `px_per_cell` pixels per cell side;
            cell (0, 0) at its top left.
        heatmap: uint8 (n_rows, n_cols, 4) from `heatmap_rgba`.
    """
    from PIL import Image

    height, width = thumbnail.shape[:2]
    cells = heatmap.repeat(px_per_cell, axis=0).repeat(px_per_cell, axis=1)
    layer = np.zeros((height, width, 4), dtype=np.uint8)
    layer[: cells.shape[0], : cells.shape[1]] = cells[:height, :width]
    alpha = (layer[..., 3:4].astype(np.float32) / 255.0) * OVERLAY_ALPHA
    blended = thumbnail * (1.0 - alpha) + layer[..., :3] * alpha
    image = Image.fromarray(np.rint(blended).astype(np.uint8))
    image.thumbnail((MAX_OVERLAY_SIDE_PX, MAX_OVERLAY_SIDE_PX), Image.Resampling.BOX)
    return np.asarray(image)


def mask_image(mask: np.ndarray) -> np.ndarray:
    """uint8 (h, w): 255 where tissue, 0 elsewhere."""
    return np.where(mask, 255, 0).astype(np.uint8)
