"""Facts about one patch: its size, the centre box that decides its label, and its id."""

from __future__ import annotations

import hashlib

import numpy as np

PATCH_SIZE_PX = 96
"""Side of every patch, in pixels (PCam and Kaggle patches are 96 x 96 RGB)."""

CENTRE_SIZE_PX = 32
"""Side of the centre box: label 1 means at least one tumour pixel inside it."""

CENTRE_START_PX = (PATCH_SIZE_PX - CENTRE_SIZE_PX) // 2
"""First row/column of the centre box (32), so it spans rows and columns 32..63."""


def patch_id(pixels: np.ndarray) -> str:
    """Return the SHA-1 hex digest of a patch's pixel bytes.

    This is how the Kaggle competition named its files, and histodetect uses the same digest
    as the id of every patch from every source, so duplicates and leaks are exact look-ups.

    Args:
        pixels: uint8 array of shape (H, W, 3), read row-major.
    """
    return hashlib.sha1(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def patch_ids(pixels: np.ndarray) -> list[str]:
    """Return the id of each patch in a (N, H, W, 3) uint8 block."""
    return [patch_id(p) for p in pixels]
