"""Pillow backend: a plain PNG or JPEG image as a one-level slide (decoded whole, so keep it small)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np

from histodetect.errors import HistodetectError
from histodetect.slides.reader import SlideReader, depth_conversion

FORMATS = ("PNG", "JPEG")


class PilSlideReader(SlideReader):
    """A PNG/JPEG image read once into memory; it records no resolution (pass --mpp).

    PNG and JPEG cannot be read region by region, so the image is decoded whole; Pillow's
    decompression-bomb limit keeps that bounded. Convert larger scans to a tiled pyramidal TIFF.
    """

    backend: ClassVar[str] = "pil"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        from PIL import Image, UnidentifiedImageError

        from histodetect.data.sources.image_file import refusal_reason

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    if image.format not in FORMATS:
                        raise HistodetectError(
                            f"{path} is a {image.format} image, not PNG or JPEG; "
                            "give a slide format (TIFF, .svs, ...) or a PNG/JPEG image."
                        )
                    reason = refusal_reason(image)
                    if reason is not None:  # Pillow would clip a 16-bit slide to white: no tissue
                        floating = image.mode == "F"
                        raise HistodetectError(f"{path} {reason} ({depth_conversion(floating)}).")
                    self._pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except UnidentifiedImageError:
            raise HistodetectError(f"{path} is not an image Pillow can read.") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise HistodetectError(
                f"{path} is too large to decode whole as PNG/JPEG; convert it to a tiled "
                "pyramidal TIFF (e.g. with vips tiffsave --tile --pyramid)."
            ) from None
        except OSError as exc:  # truncated or damaged data
            raise HistodetectError(
                f"{path} cannot be decoded: the file is truncated or corrupt ({exc})."
            ) from None

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """One level: the image's (width, height)."""
        return ((self._pixels.shape[1], self._pixels.shape[0]),)

    @property
    def mpp(self) -> None:
        """Always None: PNG/JPEG resolution tags are screen dpi, not a microscope's."""
        return None

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._pixels[y : y + height, x : x + width]
