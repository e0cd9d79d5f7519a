"""Patch ids are SHA-1 digests of the pixel bytes."""

import hashlib

import numpy as np

from histodetect.data.patch import CENTRE_START_PX, patch_id, patch_ids


def test_patch_id_is_sha1_of_row_major_bytes(rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    assert patch_id(pixels) == hashlib.sha1(pixels.tobytes()).hexdigest()
    # a non-contiguous view of the same pixels gets the same id
    flipped_twice = pixels[::-1][::-1]
    assert patch_id(flipped_twice) == patch_id(pixels)
    assert patch_id(pixels[::-1]) != patch_id(pixels)


def test_patch_ids_and_centre() -> None:
    block = np.zeros((2, 96, 96, 3), dtype=np.uint8)
    block[1, 0, 0, 0] = 1
    ids = patch_ids(block)
    assert len(set(ids)) == 2
    assert CENTRE_START_PX == 32
