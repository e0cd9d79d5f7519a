"""Decoding one image file into a 96x96 RGB uint8 patch, with every conversion reported."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
    if Path(path).is_symlink() and not Path(path).exists():
        reason = f"is a broken symbolic link (its target {Path(path).readlink()} does not exist)"
        return Decoded(None, Problem(origin, UNREADABLE, reason))
    is_tiff = Path(path).suffix.lower() in {".tif", ".tiff"}
    return _decode(path, origin, is_tiff, expected_px)


def decode_image_bytes(
    data: bytes, origin: str, expected_px: int | None = PATCH_SIZE_PX
) -> Decoded:
    """`decode_image` for an image file held in memory (an upload), without touching the disk.

    Args:
        data: the file's bytes (PNG, JPEG or TIFF; the content decides, not a name).
        origin: the name problems are reported under.
        expected_px: required side in pixels; None accepts any size.
    """
    return _decode(io.BytesIO(data), origin, data[:4] in TIFF_MAGIC, expected_px)


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
"""First four bytes of a TIFF (classic and BigTIFF, either byte order)."""


def _decode(
    source: Path | str | BinaryIO, origin: str, is_tiff: bool, expected_px: int | None
) -> Decoded:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(source) as image:
                pixels, notes = _rgb_pixels(image)
    except _RefusedError as refused:
        return Decoded(None, Problem(origin, NOT_RGB, str(refused)))
    except Exception as exc:
        fallback = _decode_with_tifffile(source, origin) if is_tiff else None
        said = _short(exc).replace(repr(source), repr(origin))  # a buffer is named as its origin
        if fallback is None:
            return Decoded(
                None, Problem(origin, UNREADABLE, f"cannot be read as an image ({said})")
            )
        # the fallback's pixels pass the same size check: a 200 px planar TIFF was returned
        # unchecked and ingest failed with "internal error" copying it into a 96 px slot
        return _sized(fallback, origin, expected_px)
    note = Problem(origin, CONVERTED, "; ".join(notes)) if notes else None
    return _sized(Decoded(pixels, note), origin, expected_px)


def _sized(decoded: Decoded, origin: str, expected_px: int | None) -> Decoded:
    """`decoded`, or a wrong-size problem when its pixels are not expected_px square."""
    pixels = decoded.pixels
    if pixels is None or expected_px is None or pixels.shape[:2] == (expected_px, expected_px):
        return decoded
    h, w = pixels.shape[:2]
    reason = f"is {w}x{h} px, expected {expected_px}x{expected_px}"
    return Decoded(None, Problem(origin, WRONG_SIZE, reason))


class _RefusedError(Exception):
    """An image Pillow reads but histodetect will not convert (its message is the reason)."""


def refusal_reason(image: Image.Image) -> str | None:
    """Why histodetect will not convert `image` to 8-bit RGB ("has 16-bit integer pixels ...;
    convert it ..."), or None when it can (also what `slide` asks of a PNG/JPEG slide)."""
    if _more_than_8_bits(image) or image.mode not in ("RGB", *_CONVERTIBLE):
        return _depth_reason(image)
    return None


def _rgb_pixels(image: Image.Image) -> tuple[np.ndarray, list[str]]:
    """Page 1 of `image` as RGB uint8 (H, W, 3), with notes on any conversion made."""
    reason = refusal_reason(image)
    if reason is not None:
        raise _RefusedError(reason)
    notes = []
    if image.mode == "RGB":
        pixels = np.asarray(image, dtype=np.uint8)
    else:
        notes.append(_CONVERTIBLE[image.mode])
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    pages = getattr(image, "n_frames", 1)
    if pages > 1:
        notes.append(f"has {pages} pages (multi-page file); page 1 was used")
    return pixels, notes


def _decode_with_tifffile(source: Path | str | BinaryIO, origin: str) -> Decoded | None:
    """Second chance for TIFFs Pillow cannot open (16-bit RGB, unusual layouts)."""
    try:
        import tifffile

        if not isinstance(source, (str, Path)):
            source.seek(0)
        arr = tifffile.imread(source)
    except Exception:
        return None
    if arr.dtype != np.uint8:
        channels = arr.shape[2] if arr.ndim == 3 else 1
        what = tiff_pixels(8 * arr.dtype.itemsize, _DTYPE_FORMATS.get(arr.dtype.kind, 1), channels)
        return Decoded(None, Problem(origin, NOT_RGB, depth_refusal(what)))
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Decoded(np.ascontiguousarray(arr), None)
    return Decoded(None, Problem(origin, NOT_RGB, f"has shape {arr.shape}, not H x W x 3"))


def _more_than_8_bits(image: Image.Image) -> bool:
    """True for 16-bit RGB files, which Pillow would silently reduce to 8 bits."""
    bits = getattr(image, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    if bits is not None and max(bits if isinstance(bits, tuple) else (bits,)) > 8:
        return True
    return _16_bit_tiles(image)


def _16_bit_tiles(image: Image.Image) -> bool:
    """True when Pillow decodes `image` from 16-bit samples (a PNG's "RGB;16B", a TIFF's)."""

    def raw_mode(args: object) -> str:  # PNG's tile args are the mode string itself
        if isinstance(args, str):
            return args
        return str(args[0]) if isinstance(args, tuple) and args else ""

    return any(";16" in raw_mode(tile.args) for tile in getattr(image, "tile", None) or [])


_SAMPLE_KINDS = {1: "integer", 2: "signed integer", 3: "floating-point"}  # TIFF SampleFormat
_DTYPE_FORMATS = {"u": 1, "i": 2, "f": 3}  # numpy dtype kind -> TIFF SampleFormat


def depth_refusal(what: str) -> str:
    """The one sentence end for pixels histodetect will not convert ("has 16-bit integer pixels
    in 3 channels; histodetect needs 8-bit RGB: ..."), for patches and slides alike."""
    return f"has {what}; histodetect needs 8-bit RGB: convert it to 8 bits per channel first"


def tiff_pixels(bits: int, sample_format: int, channels: int) -> str:
    """ "16-bit integer pixels in 3 channels": a TIFF's BitsPerSample and SampleFormat in words
    (also how `slide` names the pixels of a TIFF it refuses)."""
    kind = _SAMPLE_KINDS.get(sample_format, "integer")
    return f"{bits}-bit {kind} pixels in {channels} channel{'s' if channels > 1 else ''}"


def _depth_reason(image: Image.Image) -> str:
    """Why an image is refused, in bits per channel rather than Pillow's mode names."""
    tags = getattr(image, "tag_v2", {})
    bits = tags.get(258)  # BitsPerSample
    sample_format = tags.get(339)  # SampleFormat
    if isinstance(sample_format, tuple):
        sample_format = sample_format[0]
    if bits is not None:
        depth = max(bits) if isinstance(bits, tuple) else bits
        channels = len(bits) if isinstance(bits, tuple) else 1
        what = tiff_pixels(depth, sample_format or 1, channels)
    elif _16_bit_tiles(image):
        what = "16-bit integer pixels"
    elif image.mode == "F":
        what = "32-bit floating-point pixels"
    elif image.mode.startswith("I"):
        what = "16- or 32-bit integer pixels"
    else:
        what = f"pixels in an unsupported colour mode ({image.mode})"
    return depth_refusal(what)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]
