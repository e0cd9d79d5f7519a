"""tifffile backend: tiled (or stripped) pyramidal TIFF and OME-TIFF, decoded tile by tile.

Only the tiles (or strips) a region touches are read and decoded, so no level is ever held
whole. JPEG, LZW or JPEG 2000 compressed files need the `imagecodecs` package; deflate and
uncompressed files need nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from histodetect.errors import HistodetectError
from histodetect.slides.reader import BACKGROUND, SlideReader, plausible_mpp, tiff_depth_refusal

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
CACHE_BYTES = 64 << 20
"""Decoded tiles kept for neighbouring regions (which share tiles along their edges)."""
MICRONS_PER_UNIT = {2: 25_400.0, 3: 10_000.0}  # TIFF ResolutionUnit: 2 inch, 3 centimetre
OME_UNITS = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
APERIO_MPP = re.compile(r"\bMPP\s*=\s*([0-9.]+)")


class TiffSlideReader(SlideReader):
    """A TIFF slide: the pyramid levels of its first series, RGB(A) 8 bits per sample."""

    backend: ClassVar[str] = "tifffile"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        import tifffile

        self.read_errors = (
            OSError, ValueError, RuntimeError, EOFError, struct.error, zlib.error, IndexError,
        )  # fmt: skip
        open_errors = (tifffile.TiffFileError, KeyError, *self.read_errors)

        try:
            with _tifffile_errors() as errors:
                self._tif = tifffile.TiffFile(path)
                self._pages = _level_pages(self._tif)
                self._mpp = _first_plausible(
                    _ome_mpp(self._tif), _aperio_mpp(self._pages[0]), _tag_mpp(self._pages[0])
                )
        except HistodetectError:
            raise
        except open_errors as exc:
            raise HistodetectError(_open_failure(path, exc)) from None
        if errors:  # e.g. a page chain that runs past the end of the file
            raise HistodetectError(_open_failure(path, errors[0]))
        for level, page in enumerate(self._pages):
            _check_rgb(path, level, page)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self.read_region(len(self._pages) - 1, 0, 0, 1, 1)  # fail now if tiles cannot be decoded

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each level page."""
        return tuple((int(p.imagewidth), int(p.imagelength)) for p in self._pages)

    @property
    def mpp(self) -> float | None:
        """Microns per level-0 pixel: OME PhysicalSizeX, Aperio MPP, or the TIFF resolution tags."""
        return self._mpp

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        page = self._pages[level]
        seg_width, seg_height = _segment_size(page)
        across = math.ceil(page.imagewidth / seg_width)
        out = np.empty((height, width, 3), dtype=np.uint8)
        for row in range(y // seg_height, (y + height - 1) // seg_height + 1):
            for col in range(x // seg_width, (x + width - 1) // seg_width + 1):
                segment = self._segment(level, row * across + col)
                top, left = row * seg_height, col * seg_width
                y0, x0 = max(y, top), max(x, left)
                y1 = min(y + height, top + segment.shape[0])
                x1 = min(x + width, left + segment.shape[1])
                out[y0 - y : y1 - y, x0 - x : x1 - x] = segment[
                    y0 - top : y1 - top, x0 - left : x1 - left
                ]
        return out

    def _segment(self, level: int, index: int) -> np.ndarray:
        """Decoded tile or strip `index` of a level, uint8 (rows, columns, 3), cached."""
        key = (level, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        segment = _decode_segment(self._tif, self._pages[level], index)
        self._cache[key] = segment
        self._cached_bytes += segment.nbytes
        while self._cached_bytes > CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes
        return segment

    def close(self) -> None:
        """Close the file."""
        self._tif.close()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Collect the errors tifffile logs (e.g. a page chain broken by truncation) instead of
    letting them reach stderr; the reader turns them into one clear error."""
    logger, handler = logging.getLogger("tifffile"), _Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _open_failure(path: Path, exc: BaseException | str) -> str:
    with path.open("rb") as f:
        is_tiff = f.read(4) in TIFF_MAGICS
    if is_tiff:
        return f"{path} is a TIFF file that cannot be read: truncated or corrupt ({exc})."
    return f"{path} is not a slide: it is not a TIFF file (give a slide or PNG/JPEG image)."


def _level_pages(tif: Any) -> list[Any]:
    """The pages of the pyramid, largest first: the first series' levels, else every main-chain
    page of the same aspect ratio that is smaller than the one before (Camelyon16 layout)."""
    if not tif.series:
        raise HistodetectError(f"{tif.filehandle.path} holds no image.")
    series = tif.series[0]
    pages = [level.keyframe for level in series.levels]
    if len(pages) > 1:
        return pages
    first = pages[0]
    aspect = first.imagewidth / first.imagelength
    for page in tif.pages[1:]:
        smaller = page.imagewidth < pages[-1].imagewidth
        if smaller and abs(page.imagewidth / page.imagelength - aspect) < 0.02 * aspect:
            pages.append(page)
    return pages


def _check_rgb(path: Path, level: int, page: Any) -> None:
    samples, planar = int(page.samplesperpixel), int(page.planarconfig)
    refusal = tiff_depth_refusal(path, page)  # the words predict and OpenSlide use
    if refusal is not None:
        raise refusal
    if page.dtype != np.uint8 or samples not in (3, 4) or planar != 1:
        raise HistodetectError(
            f"{path} level {level} is not 8-bit interleaved RGB ({samples} samples of "
            f"{page.dtype}, planar configuration {planar}); histodetect reads brightfield RGB slides."
        )


def _segment_size(page: Any) -> tuple[int, int]:
    if page.is_tiled:
        return int(page.tilewidth), int(page.tilelength)
    return int(page.imagewidth), min(int(page.rowsperstrip), int(page.imagelength))


def _decode_segment(tif: Any, page: Any, index: int) -> np.ndarray:
    """Read and decode one tile or strip; an empty (sparse) one is white."""
    seg_width, seg_height = _segment_size(page)
    offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
    if count == 0:
        return np.full((seg_height, seg_width, 3), BACKGROUND, dtype=np.uint8)
    fh = tif.filehandle
    fh.seek(offset)
    data = fh.read(count)
    if len(data) < count:
        raise EOFError(f"tile {index} ends {count - len(data)} bytes past the end of the file")
    kwargs: dict[str, Any] = {"_fullsize": bool(page.is_tiled)}
    if page.compression in (6, 7, 33007, 34892):  # JPEG flavours carry shared tables
        kwargs |= {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}
    try:
        decoded = page.decode(data, index, **kwargs)[0]
    except (ValueError, RuntimeError) as exc:
        if "imagecodecs" in str(exc):
            raise HistodetectError(
                f"{tif.filehandle.path} is compressed with {page.compression.name}, which needs "
                "the imagecodecs package: pip install imagecodecs (or read it with OpenSlide, "
                "pip install -c constraints.txt -e '.[slides]')."
            ) from None
        raise
    if decoded is None:
        return np.full((seg_height, seg_width, 3), BACKGROUND, dtype=np.uint8)
    return np.ascontiguousarray(np.asarray(decoded)[0, :, :, :3])


def _first_plausible(*values: float | None) -> float | None:
    return next((v for v in values if plausible_mpp(v) is not None), None)


def _ome_mpp(tif: Any) -> float | None:
    xml = tif.ome_metadata if tif.is_ome else None
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("Pixels") and "PhysicalSizeX" in element.attrib:
            unit = element.attrib.get("PhysicalSizeXUnit", "µm")
            try:
                return float(element.attrib["PhysicalSizeX"]) * OME_UNITS[unit]
            except (KeyError, ValueError):  # an unknown unit or a malformed number: no resolution
                return None
    return None


def _aperio_mpp(page: Any) -> float | None:
    match = APERIO_MPP.search(page.description or "")
    return float(match.group(1)) if match else None


def _tag_mpp(page: Any) -> float | None:
    resolution, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if resolution is None or unit is None or int(unit.value) not in MICRONS_PER_UNIT:
        return None
    numerator, denominator = resolution.value
    if numerator == 0 or denominator == 0:
        return None
    return MICRONS_PER_UNIT[int(unit.value)] * denominator / numerator
