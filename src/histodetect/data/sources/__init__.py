"""One reader per input layout; `open_source` picks the reader from the path (or --format)."""

from __future__ import annotations

from pathlib import Path

from histodetect.data.sources.base import Block, FileEntry, FileListSource, Source
from histodetect.data.sources.csv_list import CsvListSource
from histodetect.data.sources.folders import FolderSource, looks_like_folders
from histodetect.data.sources.kaggle import KaggleSource, looks_like_kaggle
from histodetect.data.sources.pcam_h5 import PcamSource, looks_like_pcam
from histodetect.errors import HistodetectError

FORMATS = ("kaggle", "pcam", "folders", "csv")

__all__ = [
    "FORMATS",
    "Block",
    "CsvListSource",
    "FileEntry",
    "FileListSource",
    "FolderSource",
    "KaggleSource",
    "PcamSource",
    "Source",
    "detect_format",
    "open_source",
]


def detect_format(path: Path) -> str:
    """Name the layout at `path`: kaggle, pcam, folders or csv; raise when none fits."""
    if not path.exists():
        raise HistodetectError(f"{path} does not exist.")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        if looks_like_pcam(path):
            return "pcam"
        raise HistodetectError(
            f"{path} is a file but neither a CSV of path,label nor a PCam .h5 file."
        )
    if looks_like_pcam(path):
        return "pcam"
    if looks_like_kaggle(path):
        return "kaggle"
    if looks_like_folders(path):
        return "folders"
    raise HistodetectError(
        f"cannot tell the layout of {path}: expected a Kaggle folder (train/*.tif + train_labels.csv), "
        "PCam .h5 files, class folders <split>/<label>/*.png, or a CSV of path,label."
    )


def open_source(
    path: Path,
    fmt: str | None = None,
    *,
    slides_csv: Path | None = None,
    scratch_dir: Path | None = None,
) -> Source:
    """Open the reader for `path`; `fmt` overrides the detected format."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise HistodetectError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if not path.exists():
        raise HistodetectError(f"{path} does not exist.")
    if slides_csv is not None and fmt != "kaggle":
        raise HistodetectError(
            "--slides applies to the Kaggle layout only; other layouts carry slides themselves."
        )
    if fmt == "kaggle":
        return KaggleSource(path, slides_csv)
    if fmt == "pcam":
        return PcamSource(path, scratch_dir)
    if fmt == "folders":
        return FolderSource(path)
    return CsvListSource(path)
