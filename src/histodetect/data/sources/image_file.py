"""Decoding one image file into a 96x96 RGB uint8 patch, with every conversion reported."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histodetect.data.patch import PATCH_SIZE_PX
from histodetect.data.quality import CONVERTED, NOT_RGB, UNREADABLE, WRONG_SIZE, Problem

IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg"})

# Pillow modes turned into RGB without guessing, and what the conversion means.
_CONVERTIBLE = {
    "L": "grayscale image converted to RGB by repeating the grey channel",
    "LA": "grayscale+alpha image converted to RGB (alpha dropped)",
    "RGBA": "RGBA image converted to RGB (alpha dropped)",
    "P": "palette image converted to RGB",
    "PA": "palette+alpha image converted to RGB (alpha dropped)",
    "CMYK": "CMYK image converted to RGB",
    "YCbCr": "YCbCr image converted to RGB",
    "1": "1-bit image converted to RGB",
}


@dataclass(frozen=True)
class Decoded:
    """Result of decoding one file: pixels (96, 96, 3) uint8 or None, plus any problem."""

    pixels: np.ndarray | None
    problem: Problem | None


def decode_image(path: Path | str, expected_px: int | None = PATCH_SIZE_PX) -> Decoded:
    """Read an image file as RGB uint8.

    Grayscale, alpha and palette images are converted and reported (kind "converted"); 16-bit
    and float images are refused (kind "not_rgb"), since scaling them to 8 bits would be a guess.

    Args:
        path: a .tif/.tiff/.png/.jpg file.
        expected_px: required side in pixels; None accepts any size.
    """
    origin = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                mode = image.mode
                if _more_than_8_bits(image):
                    return Decoded(None, Problem(origin, NOT_RGB, _bit_depth_reason("I;16")))
                if mode == "RGB":
                    pixels = np.asarray(image, dtype=np.uint8)
                    note = None
                elif mode in _CONVERTIBLE:
                    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
                    note = Problem(origin, CONVERTED, _CONVERTIBLE[mode])
                else:
                    return Decoded(None, Problem(origin, NOT_RGB, _bit_depth_reason(mode)))
    except Exception as exc:
        return _decode_with_tifffile(path) or Decoded(
            None, Problem(origin, UNREADABLE, f"cannot be read as an image ({_short(exc)})")
        )
    if expected_px is not None and pixels.shape[:2] != (expected_px, expected_px):
        h, w = pixels.shape[:2]
        reason = f"is {w}x{h} px, expected {expected_px}x{expected_px}"
        return Decoded(None, Problem(origin, WRONG_SIZE, reason))
    return Decoded(pixels, note)


def _decode_with_tifffile(path: Path | str) -> Decoded | None:
    """Second chance for TIFFs Pillow cannot open (16-bit RGB, unusual layouts)."""
    if Path(path).suffix.lower() not in {".tif", ".tiff"}:
        return None
    try:
        import tifffile

        arr = tifffile.imread(path)
    except Exception:
        return None
    if arr.dtype != np.uint8:
        reason = f"has {arr.dtype} pixels; histodetect needs 8-bit RGB (convert it first)"
        return Decoded(None, Problem(str(path), NOT_RGB, reason))
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Decoded(np.ascontiguousarray(arr), None)
    return Decoded(None, Problem(str(path), NOT_RGB, f"has shape {arr.shape}, not H x W x 3"))


def _more_than_8_bits(image: Image.Image) -> bool:
    """True for 16-bit RGB files, which Pillow would silently reduce to 8 bits."""
    bits = getattr(image, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    if bits is not None and max(bits if isinstance(bits, tuple) else (bits,)) > 8:
        return True
    tiles = getattr(image, "tile", None) or []
    return any(";16" in str(tile.args[0] if tile.args else "") for tile in tiles)


def _bit_depth_reason(mode: str) -> str:
    if mode.startswith("I;16") or mode == "I":
        return f"is a 16/32-bit image (mode {mode}); histodetect needs 8-bit RGB (convert it first)"
    if mode == "F":
        return "is a floating-point image; histodetect needs 8-bit RGB (convert it first)"
    return f"has image mode {mode}; histodetect needs 8-bit RGB"


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]
