"""Real PCam patches from ../shared/data/pcam-subset/valid, read straight from their JPEGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def valid_patches(shared_data: Path, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` patches of each class of the valid split (sorted by name).

    Returns:
        uint8 (2 * per_class, 96, 96, 3) pixels and int (2 * per_class,) labels.
    """
    pixels, labels = [], []
    for label in (0, 1):
        files = sorted((shared_data / "pcam-subset" / "valid" / str(label)).glob("*.jpg"))
        for file in files[:per_class]:
            with Image.open(file) as image:
                pixels.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    return np.stack(pixels), np.asarray(labels)
