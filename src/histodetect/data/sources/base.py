"""What every reader yields: blocks of decoded patches with labels, splits, slides and origins."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histodetect.data.patch import PATCH_SIZE_PX, patch_ids
from histodetect.data.quality import NAME_MISMATCH, Problem, flag_outliers
from histodetect.data.sources.image_file import decode_image
from histodetect.parallel import ordered_map

FILES_PER_TASK = 256
"""Files one worker decodes per task: large enough that pickling overhead stays small."""


@dataclass(frozen=True)
class FileEntry:
    """One image file to ingest, with what the listing knows about it."""

    path: Path
    label: int  # 1, 0, or -1 when unlabelled
    split: str = ""
    slide: str = ""
    named_by_id: bool = False  # Kaggle: the file's stem is the SHA-1 of its pixels


@dataclass
class Block:
    """Decoded patches ready for the store, plus problems met while decoding them.

    Attributes:
        pixels: uint8 (n, 96, 96, 3).
        labels: int8 (n,), -1 for unlabelled.
        splits, slides, origins: one string each per patch.
        problems: files of this block that were skipped or converted.
    """

    pixels: np.ndarray
    labels: np.ndarray
    splits: list[str]
    slides: list[str]
    origins: list[str]
    problems: list[Problem] = field(default_factory=list)
    n_inputs: int = 0  # inputs consumed (decoded or skipped), for progress bars
    ids: list[str] | None = None  # SHA-1 per patch, when the reader computed them (in a worker)
    flags: list[str] | None = None  # quality flags per patch, likewise


class Source(ABC):
    """A reader of one input layout. Listing problems are known before any decoding."""

    format_name: str = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []

    @abstractmethod
    def count(self) -> int:
        """Number of inputs that will be read (for progress)."""

    @abstractmethod
    def iter_blocks(self, workers: int) -> Iterator[Block]:
        """Yield decoded blocks in a deterministic order."""


class FileListSource(Source):
    """A source made of image files (Kaggle tifs, class folders, CSV lists), decoded in parallel."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entries: list[FileEntry] = []

    def count(self) -> int:
        return len(self.entries)

    def iter_blocks(self, workers: int) -> Iterator[Block]:
        chunks = [
            self.entries[i : i + FILES_PER_TASK]
            for i in range(0, len(self.entries), FILES_PER_TASK)
        ]
        # in order, so stores are identical whatever the number of workers
        yield from ordered_map(decode_entries, chunks, workers)


def decode_entries(entries: Sequence[FileEntry]) -> Block:
    """Decode a list of files into one Block (runs in a worker process)."""
    pixels = np.empty((len(entries), PATCH_SIZE_PX, PATCH_SIZE_PX, 3), dtype=np.uint8)
    keep: list[FileEntry] = []
    problems: list[Problem] = []
    for entry in entries:
        decoded = decode_image(entry.path)
        if decoded.problem is not None:
            problems.append(decoded.problem)
        if decoded.pixels is not None:
            pixels[len(keep)] = decoded.pixels
            keep.append(entry)
    pixels = pixels[: len(keep)]
    ids = patch_ids(pixels)  # hashing and flagging here runs them in the worker processes
    problems += [_name_mismatch(e) for e, pid in zip(keep, ids, strict=True)
                 if e.named_by_id and e.path.stem != pid]  # fmt: skip
    return Block(
        pixels=pixels,
        labels=np.array([e.label for e in keep], dtype=np.int8),
        splits=[e.split for e in keep],
        slides=[e.slide for e in keep],
        origins=[str(e.path) for e in keep],
        problems=problems,
        n_inputs=len(entries),
        ids=ids,
        flags=flag_outliers(pixels),
    )


def _name_mismatch(entry: FileEntry) -> Problem:
    """A Kaggle file whose name is not its pixels' SHA-1: renamed (two names swapped give two
    patches each other's label) or re-encoded. Kept with the label its name has, but listed,
    so that --strict refuses it; nothing checked this before (NAME_MISMATCH was never used)."""
    where = "train_labels.csv's label for it" if entry.label >= 0 else "its name"
    return Problem(str(entry.path), NAME_MISMATCH,
                   "its name is not the SHA-1 of its pixels, as Kaggle names each patch: it was "
                   f"renamed or re-encoded, so {where} may belong to another patch")  # fmt: skip
