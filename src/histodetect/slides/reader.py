"""The slide reader interface (levels, resolution, regions) and `open_slide`, which picks a backend.

Three backends, one file each: OpenSlide (`openslide_reader`, the `slides` extra) for the
vendor formats and generic tiled TIFF, tifffile (`tifffile_reader`) for tiled pyramidal TIFF
and OME-TIFF, Pillow (`pil_reader`) for plain PNG/JPEG images. Coordinates are (x, y) =
(column, row) in pixels of the level read; level 0 is the full resolution.
"""

from __future__ import annotations

import abc
import math
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from histodetect.errors import HistodetectError
from histodetect.slides import BACKENDS


def tiff_depth_refusal(path: Path, page: Any) -> HistodetectError | None:
    """The refusal of a tifffile page whose samples are not 8-bit (None when they are or
    tifffile has no type for them): one sentence for the OpenSlide and tifffile readers alike."""
    if page.dtype is None or (
        np.dtype(page.dtype) == np.uint8 and int(np.max(page.bitspersample)) == 8
    ):
        return None
    from histodetect.data.sources.image_file import depth_refusal, tiff_pixels

    sample_format = int(page.sampleformat)
    bits, samples = int(np.max(page.bitspersample)), int(page.samplesperpixel)
    what = tiff_pixels(bits, sample_format, samples)
    return HistodetectError(
        f"{path} {depth_refusal(what)} ({depth_conversion(sample_format == 3)})."
    )


def depth_conversion(floating: bool) -> str:
    """How to make an 8-bit RGB slide of deeper pixels with libvips (ends a depth refusal):
    integers shifted down to their top 8 bits, floats in 0..1 scaled by 255; a plain
    `vips cast uchar` would clip every value above 255 to white."""
    first = "vips linear IN T.v 255 0 --uchar" if floating else "vips cast IN T.v uchar --shift"
    return f"e.g. {first}, then vips tiffsave T.v OUT.tif --tile --pyramid"


TIFF_SUFFIXES = frozenset({".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8"})
PIL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
OPENSLIDE_ONLY_SUFFIXES = frozenset(
    {".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide", ".dcm", ".czi"}
)
MPP_RANGE = (0.01, 100.0)
"""Microns per pixel outside this range is not a microscope resolution (e.g. 72 dpi defaults)."""
BACKGROUND = 255
"""Value of the pixels outside the slide: white, like empty glass."""


class SlideReader(abc.ABC):
    """An open whole-slide image.

    Subclasses implement `level_dimensions`, `mpp` and `_read`; `read_region` adds bounds
    handling and turns a failed read into one clear error.

    Attributes:
        path: the slide file.
        backend: the backend's name, one of `BACKENDS`.
    """

    backend: ClassVar[str] = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.read_errors: tuple[type[BaseException], ...] = (OSError, ValueError)
        """Exceptions of the backend's library that mean the file is damaged."""

    @property
    @abc.abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) in pixels of each pyramid level, largest (level 0) first."""

    @property
    @abc.abstractmethod
    def mpp(self) -> float | None:
        """Microns per level-0 pixel from the file's metadata, or None when it has none."""

    @abc.abstractmethod
    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """uint8 (height, width, 3) pixels of a rectangle lying inside the level."""

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per pixel of each level (1.0 for level 0), from the widths."""
        width0 = self.level_dimensions[0][0]
        return tuple(width0 / width for width, _ in self.level_dimensions)

    def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """uint8 (height, width, 3) pixels at `level`; parts outside the slide are white.

        Args:
            level: pyramid level (0 = full resolution).
            x, y: top-left corner in pixels of that level; may be negative.
            width, height: size in pixels of that level.

        Raises:
            HistodetectError: the file cannot be decoded there (truncated or corrupt).
        """
        out = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
        level_width, level_height = self.level_dimensions[level]
        left, top = max(x, 0), max(y, 0)
        right, bottom = min(x + width, level_width), min(y + height, level_height)
        if right <= left or bottom <= top:
            return out
        try:
            pixels = self._read(level, left, top, right - left, bottom - top)
        except HistodetectError:
            raise
        except self.read_errors as exc:
            raise HistodetectError(
                f"{self.path} cannot be read at level {level}, x={left}, y={top}: the file is "
                f"truncated or corrupt ({_short(exc)})."
            ) from exc
        out[top - y : bottom - y, left - x : right - x] = pixels
        return out

    def close(self) -> None:  # noqa: B027 (optional hook: not every backend holds a handle)
        """Release the file handle."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def plausible_mpp(value: float | None) -> float | None:
    """`value` if it is a finite microscope resolution in `MPP_RANGE`, else None."""
    if value is None or not math.isfinite(value):
        return None
    return value if MPP_RANGE[0] <= value <= MPP_RANGE[1] else None


def open_slide(path: Path | str, backend: str = "auto") -> SlideReader:
    """Open a slide with the named backend, or the first that fits its format ("auto").

    "auto" takes OpenSlide when it is installed and recognises the file, else tifffile for
    TIFF-like files and Pillow for PNG/JPEG.

    Raises:
        HistodetectError: the file does not exist, its format is not supported, it is not a
            slide, or the backend it needs is not installed; one sentence naming the file.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise HistodetectError(
            f"--reader {backend!r} is unknown; use one of {', '.join(BACKENDS)}."
        )
    if not path.exists():
        raise HistodetectError(f"slide {path} does not exist.")
    if path.is_dir() and path.suffix.lower() != ".mrxs":
        raise HistodetectError(f"slide {path} is a folder; give the slide file itself.")
    if backend == "auto":
        backend = _auto_backend(path)
    if backend == "openslide":
        from histodetect.slides.openslide_reader import OpenSlideReader

        return OpenSlideReader(path)
    if backend == "tifffile":
        from histodetect.slides.tifffile_reader import TiffSlideReader

        return TiffSlideReader(path)
    from histodetect.slides.pil_reader import PilSlideReader

    return PilSlideReader(path)


def _auto_backend(path: Path) -> str:
    from histodetect.slides.openslide_reader import openslide_detects

    suffix = path.suffix.lower()
    if openslide_detects(path):
        return "openslide"
    if suffix in TIFF_SUFFIXES:
        return "tifffile"
    if suffix in PIL_SUFFIXES:
        return "pil"
    if suffix in OPENSLIDE_ONLY_SUFFIXES:
        from histodetect.slides.openslide_reader import require_openslide

        require_openslide(path)  # raises the install hint when OpenSlide is missing
        raise HistodetectError(f"{path} is not a slide OpenSlide can read (damaged or incomplete).")
    raise HistodetectError(
        f"{path} has an unsupported slide format ({suffix or 'no suffix'}); use a tiled "
        "pyramidal TIFF or OME-TIFF, an OpenSlide format (.svs, .ndpi, .mrxs, .scn, ...) or a "
        "PNG/JPEG image."
    )


def read_downsampled(
    reader: SlideReader, downsample: float, max_bytes: int = 64 << 20
) -> np.ndarray:
    """The whole slide at `downsample` level-0 pixels per pixel, read in horizontal strips.

    Reads the finest level no coarser than `downsample` strip by strip (each at most
    `max_bytes` before resizing), so a slide without a pyramid never sits in memory whole.

    Returns:
        uint8 (ceil(height0 / downsample), ceil(width0 / downsample), 3).
    """
    from PIL import Image

    width0, height0 = reader.level_dimensions[0]
    out_width, out_height = math.ceil(width0 / downsample), math.ceil(height0 / downsample)
    level = pick_level(reader.level_downsamples, downsample)
    factor = downsample / reader.level_downsamples[level]  # level px per output px
    read_width = math.ceil(out_width * factor)
    rows_per_strip = max(1, int(max_bytes // (3 * read_width * factor)))
    strips = []
    for out_top in range(0, out_height, rows_per_strip):
        out_rows = min(rows_per_strip, out_height - out_top)
        top, bottom = out_top * factor, (out_top + out_rows) * factor
        first = math.floor(top)
        pixels = reader.read_region(level, 0, first, read_width, math.ceil(bottom) - first)
        box = (0.0, top - first, out_width * factor, bottom - first)
        image = Image.fromarray(pixels).resize((out_width, out_rows), Image.Resampling.BOX, box)
        strips.append(np.asarray(image))
    return np.concatenate(strips)


def pick_level(downsamples: tuple[float, ...], target: float, tolerance: float = 0.02) -> int:
    """The coarsest level whose downsample is at most `target` (within `tolerance`), else 0.

    Reading a finer level and shrinking keeps detail; a coarser one would need enlarging.
    """
    usable = [i for i, ds in enumerate(downsamples) if ds <= target * (1 + tolerance)]
    return max(usable, key=lambda i: downsamples[i]) if usable else 0


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
