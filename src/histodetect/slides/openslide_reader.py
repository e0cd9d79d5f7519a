"""OpenSlide backend (the `slides` extra): Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs, generic tiled TIFF..."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from histodetect.errors import HistodetectError
from histodetect.slides.reader import SlideReader, plausible_mpp, tiff_depth_refusal

INSTALL_HINT = "pip install -c constraints.txt -e '.[slides]'"


def _import_openslide() -> ModuleType | None:
    try:
        import openslide  # optional dependency: the `slides` extra
    except (ImportError, OSError):  # OSError: the wheel is there but its library is not
        return None
    return openslide


def openslide_detects(path: Path) -> bool:
    """True when OpenSlide is installed and recognises `path` as a slide it can open."""
    openslide = _import_openslide()
    if openslide is None:
        return False
    try:
        return openslide.OpenSlide.detect_format(str(path)) is not None
    except openslide.OpenSlideError:
        return False


def require_openslide(path: Path) -> ModuleType:
    """The `openslide` module, or a clear error naming the slide and the extra to install."""
    openslide = _import_openslide()
    if openslide is None:
        raise HistodetectError(
            f"reading {path} needs OpenSlide, which is not installed: {INSTALL_HINT}."
        )
    return openslide


class OpenSlideReader(SlideReader):
    """A slide opened with OpenSlide; regions come back as RGB over a white background."""

    backend: ClassVar[str] = "openslide"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        openslide = require_openslide(path)
        self.read_errors = (openslide.OpenSlideError, OSError, ValueError)
        _check_tiff_samples(path)
        try:
            self._slide: Any = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise HistodetectError(f"{path} is not a slide OpenSlide can read.") from None
        except (openslide.OpenSlideError, OSError) as exc:
            raise HistodetectError(
                f"{path} cannot be opened by OpenSlide: the file is truncated or corrupt ({exc})."
            ) from None

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each level as OpenSlide reports them."""
        return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """OpenSlide's own downsamples (exact even where level sizes were rounded)."""
        return tuple(float(ds) for ds in self._slide.level_downsamples)

    @property
    def mpp(self) -> float | None:
        """`openslide.mpp-x` (microns per level-0 pixel) when the format records it."""
        value = self._slide.properties.get("openslide.mpp-x")
        try:
            return plausible_mpp(float(value)) if value is not None else None
        except ValueError:
            return None

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        location = (round(x * downsample), round(y * downsample))
        rgba = np.asarray(self._slide.read_region(location, level, (width, height)))
        return composite_on_white(rgba)

    def close(self) -> None:
        """Close the OpenSlide handle."""
        self._slide.close()


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) of an RGBA (h, w, 4) image laid over white (transparent = no tissue)."""
    alpha = rgba[..., 3:4].astype(np.uint16)
    if bool((alpha == 255).all()):
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _check_tiff_samples(path: Path) -> None:
    """Refuse a TIFF whose level 0 is not 8 bits per sample before OpenSlide reads it:
    OpenSlide (libtiff's RGBA reader) turned 16-bit samples into 8-bit ones in silence, and
    called a float TIFF "truncated or corrupt". Only the sample type is checked here; the
    vendor layouts OpenSlide knows are its own business."""
    from histodetect.slides.reader import TIFF_SUFFIXES

    if path.suffix.lower() not in TIFF_SUFFIXES:
        return
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            refusal = tiff_depth_refusal(path, tif.pages.first)
    except Exception:  # not a TIFF tifffile reads (a vendor format, damaged): OpenSlide says
        return
    if refusal is not None:
        raise refusal
