"""Reader for PatchCamelyon HDF5 files (.h5 or .h5.gz), keeping the official splits."""

from __future__ import annotations

import contextlib
import gzip
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from histodetect.data.patch import PATCH_SIZE_PX
from histodetect.data.quality import MISSING_IMAGE, Problem
from histodetect.data.sources.base import Block, Source
from histodetect.data.sources.labels_csv import read_csv_rows
from histodetect.errors import HistodetectError

PCAM_FILE = re.compile(r"^camelyonpatch_level_2_split_(train|valid|test)_(x|y)\.h5(\.gz)?$")
SPLIT_ORDER = ("train", "valid", "test")
ROWS_PER_BLOCK = 4096
GUNZIP_CHUNK_BYTES = 16 << 20


class PcamSource(Source):
    """PCam `camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5[.gz]` in one folder.

    Each split present becomes a store split. `_y` files give labels (a split without one is
    unlabelled); `camelyonpatch_level_2_split_<split>_meta.csv` (column `wsi`) gives slide ids.
    Gzipped files are decompressed as a stream into a scratch folder, never into RAM.
    """

    format_name = "pcam"

    def __init__(self, root: Path, scratch_dir: Path | None = None) -> None:
        folder = root if root.is_dir() else root.parent
        super().__init__(root)
        self.scratch_dir = scratch_dir
        only_split = _split_of(root) if root.is_file() else None
        files = _pcam_files(folder, only_split)
        self.x_files = {s: p for (s, kind), p in files.items() if kind == "x"}
        if not self.x_files:
            raise HistodetectError(f"{root} holds no camelyonpatch_level_2_split_*_x.h5 file.")
        for (split, kind), path in files.items():
            if kind == "y" and split not in self.x_files:
                self.problems.append(
                    Problem(str(path), MISSING_IMAGE, f"labels without {split}_x file")
                )
        self.labels = {s: self._read_labels(files.get((s, "y"))) for s in self.x_files}
        self.slides = {s: _read_slides(folder, s) for s in self.x_files}

    def count(self) -> int:
        return sum(len(v) for v in self.labels.values() if v is not None)

    def iter_blocks(self, workers: int) -> Iterator[Block]:
        for split in (s for s in SPLIT_ORDER if s in self.x_files):
            x_path = self.x_files[split]
            with _local_h5(x_path, self.scratch_dir) as local, open_h5(local, x_path) as f:
                x = _dataset(f, "x", x_path)
                n = len(x)
                labels, slides = self._split_columns(split, n, x_path)
                for start in range(0, n, ROWS_PER_BLOCK):
                    stop = min(start + ROWS_PER_BLOCK, n)
                    yield Block(
                        pixels=read_rows(x, start, stop, x_path),
                        labels=labels[start:stop],
                        splits=[split] * (stop - start),
                        slides=slides[start:stop],
                        origins=[f"{x_path.name}#{i}" for i in range(start, stop)],
                        n_inputs=stop - start,
                    )

    def _split_columns(self, split: str, n: int, x_path: Path) -> tuple[np.ndarray, list[str]]:
        labels = self.labels[split]
        if labels is None:
            labels = np.full(n, -1, dtype=np.int8)
        elif len(labels) != n:
            raise HistodetectError(
                f"{x_path.name} has {n} patches but its _y file has {len(labels)} labels."
            )
        slides = self.slides[split] or [""] * n
        if len(slides) != n:
            raise HistodetectError(f"{split} meta CSV has {len(slides)} rows for {n} patches.")
        return labels, slides

    def _read_labels(self, y_path: Path | None) -> np.ndarray | None:
        if y_path is None:
            return None
        with _local_h5(y_path, self.scratch_dir) as local, open_h5(local, y_path) as f:
            y = read_rows(_dataset(f, "y", y_path), 0, None, y_path).reshape(-1)
        if not np.isin(y, (0, 1)).all():
            raise HistodetectError(f"{y_path.name} holds labels other than 0 and 1.")
        return y.astype(np.int8)


def _split_of(path: Path) -> str:
    m = PCAM_FILE.match(path.name)
    if m is None:
        raise HistodetectError(
            f"{path} is not named like a PCam file (camelyonpatch_level_2_split_*)."
        )
    return m.group(1)


def _pcam_files(folder: Path, only_split: str | None) -> dict[tuple[str, str], Path]:
    """(split, "x"|"y") -> path; a single given file brings its split's other files along."""
    files: dict[tuple[str, str], Path] = {}
    for path in sorted(folder.iterdir()):
        m = PCAM_FILE.match(path.name)
        if m and only_split in (None, m.group(1)):
            files.setdefault((m.group(1), m.group(2)), path)  # .h5 sorts before .h5.gz
    return files


def _read_slides(folder: Path, split: str) -> list[str] | None:
    meta = folder / f"camelyonpatch_level_2_split_{split}_meta.csv"
    if not meta.is_file():
        return None
    return [row["wsi"] for row in read_csv_rows(meta, ("wsi",))]


def _dataset(f: Any, name: str, path: Path) -> Any:
    """Dataset `name` of an open PCam file; an `x` dataset must be uint8 (N, 96, 96, 3)."""
    if name not in f:
        raise HistodetectError(f"{path.name} has no dataset {name!r} (PCam files hold 'x' or 'y').")
    data = f[name]
    if not hasattr(data, "dtype"):  # an h5py Group: "internal error" on .ndim before
        raise HistodetectError(
            f"{path.name}: {name!r} is a group, not a dataset of {'patches' if name == 'x' else 'labels'}; "
            "give the PCam files as downloaded."
        )
    if name == "x" and (data.ndim != 4 or data.shape[1:] != (PATCH_SIZE_PX, PATCH_SIZE_PX, 3)):
        raise HistodetectError(f"{path.name} holds {data.shape} arrays, expected (N, 96, 96, 3).")
    if name == "x" and data.dtype != np.uint8:
        raise HistodetectError(
            f"{path} holds {data.dtype} pixels, not uint8 (0-255) as PCam does; histodetect does "
            "not guess a scaling: convert the pixels to uint8 first."
        )
    return data


@contextlib.contextmanager
def open_h5(path: Path, name: Path | None = None) -> Iterator[Any]:
    """Open an HDF5 file read-only; a truncated or damaged file is one sentence naming `name`.

    Args:
        path: the file to open (possibly a decompressed copy).
        name: the file to name in messages (default `path`).
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        if exc.errno is not None:  # a real OS error (permissions, missing file): say it as is
            raise
        raise HistodetectError(
            f"{name or path} cannot be read as an HDF5 file: it is truncated or damaged "
            f"({_first_line(exc)})."
        ) from exc
    with f:
        yield f


def read_rows(data: Any, start: int, stop: int | None, path: Path) -> np.ndarray:
    """Rows start..stop of an HDF5 dataset as a numpy array; damaged chunks are one sentence."""
    try:
        return np.asarray(data[start:stop])
    except OSError as exc:
        raise HistodetectError(
            f"{path} is damaged: rows from {start} cannot be read ({_first_line(exc)})."
        ) from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


@contextlib.contextmanager
def _local_h5(path: Path, scratch_dir: Path | None) -> Iterator[Path]:
    """Yield a readable .h5 path: the file itself, or a streamed decompression of a .gz.

    The copy goes into `scratch_dir` (ingest gives a folder beside the store that a later
    ingest removes if this one is killed) and is deleted when the block ends.
    """
    if path.suffix != ".gz":
        yield path
        return
    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix="pcam-gunzip-") as tmp:
        local = Path(tmp) / path.stem
        try:
            with gzip.open(path, "rb") as src, local.open("wb") as dst:
                shutil.copyfileobj(src, dst, GUNZIP_CHUNK_BYTES)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            # disk full or read-only scratch are OSErrors with an errno: they pass through
            raise HistodetectError(f"{path} is not a readable gzip file ({exc}).") from exc
        yield local


def looks_like_pcam(root: Path) -> bool:
    """A PCam .h5/.h5.gz file, or a folder holding one."""
    if root.is_file():
        return bool(PCAM_FILE.match(root.name))
    return any(PCAM_FILE.match(p.name) for p in root.iterdir())
