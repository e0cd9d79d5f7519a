"""What `predict` reads: `collect_inputs` resolves arguments (files, folders, globs, stores,
PCam _x.h5 files) in order, failing on paths that do not exist; `iter_batches` reads them,
decoding image files in worker processes. An unusable file becomes a row with an error."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from histodetect.data.quality import CONVERTED
from histodetect.data.sources.image_file import (
    IMAGE_SUFFIXES,
    Decoded,
    decode_image,
    decode_image_bytes,
)
from histodetect.data.sources.pcam_h5 import open_h5, read_rows
from histodetect.errors import HistodetectError
from histodetect.parallel import ordered_map

FILES_PER_TASK = 512
"""Image files one worker decodes per task (and the largest batch handed to the model)."""
ROWS_PER_READ = 1024
"""Patches read from a store or .h5 file at once."""
STORE_HEADER = "header.json"
SUFFIXES_TEXT = "/".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))


@dataclass(frozen=True)
class InputGroup:
    """Inputs read the same way: a run of image files, one patch store, or one .h5 x file."""

    kind: Literal["files", "store", "h5"]
    path: Path | None = None  # store folder or .h5 file
    files: tuple[Path, ...] = ()
    count: int = 0
    size_px: int = 0  # patch side of a store or .h5 file

    @property
    def n_patches(self) -> int:
        """Rows this group gives: one per file, or one per stored patch."""
        return len(self.files) if self.kind == "files" else self.count


@dataclass
class Batch:
    """Rows read together, in input order; `pixels` holds only the rows without an error.

    Attributes:
        ids, paths, errors: one entry per row; errors[i] is None when row i was read.
        pixels: uint8 (number of rows without error, S, S, 3), in row order.
        notes: one entry per row (or empty: none): how the file was converted to RGB (a
            greyscale, CMYK or palette image, the first page of a multi-page TIFF), as `ingest`
            reports it; None when it was read as it is.
    """

    ids: list[str]
    paths: list[str]
    errors: list[str | None]
    pixels: np.ndarray
    notes: list[str | None] = field(default_factory=list)


# ----------------------------------------------------------------------------- collecting


def collect_inputs(args: Iterable[str | Path]) -> list[InputGroup]:
    """Resolve files, folders, unexpanded globs, stores and .h5 files into groups, in order.

    Raises:
        HistodetectError: a path that does not exist, a glob that matches nothing, a folder
            without images, a folder that cannot be read, a file histodetect cannot
            predict on, or inputs that hold no patch at all.
    """
    groups: list[InputGroup] = []
    files: list[Path] = []  # consecutive image files become one group
    for group in (g for arg in args for g in _resolve(str(arg))):
        if group.kind == "files":
            files += group.files
            continue
        if files:
            groups.append(InputGroup("files", files=tuple(files)))
            files = []
        groups.append(group)
    groups = [*groups, InputGroup("files", files=tuple(files))] if files else groups
    if not any(group.n_patches for group in groups):  # an empty store or .h5 said "0 predicted"
        empty = [str(group.path) for group in groups if group.path is not None]
        raise HistodetectError(
            f"{', '.join(empty) or 'the inputs'} hold{'s' if len(empty) == 1 else ''} no "
            "patches; give inputs with at least one patch."
        )
    return groups


def _resolve(arg: str) -> list[InputGroup]:
    path = Path(arg).expanduser()
    if path.exists():
        return [_resolve_path(path, explicit=True)]
    if any(char in arg for char in "*?["):
        # Path.glob takes no absolute patterns; glob.glob takes any the shell would.
        matches = sorted(glob.glob(str(path), recursive=True))  # noqa: PTH207
        if not matches:
            raise HistodetectError(f"no file matches {arg}.")
        groups = [_resolve_path(Path(m), explicit=False) for m in matches]
        groups = [g for g in groups if g.n_patches or g.kind != "files"]
        if not groups:
            raise HistodetectError(f"{arg} matches no image, patch store or .h5 file.")
        return groups
    raise HistodetectError(f"{arg} does not exist.")


def _resolve_path(path: Path, explicit: bool) -> InputGroup:
    if path.is_dir():
        _check_readable(path)
        if (path / STORE_HEADER).is_file():
            return _store_group(path)
        return InputGroup("files", files=_folder_images(path, explicit))
    name = path.name.lower()
    if name.endswith((".h5", ".hdf5")):
        return _h5_group(path)
    if name.endswith(".h5.gz"):
        raise HistodetectError(
            f"{path} is gzipped; gunzip it first, or ingest it with `histodetect ingest`."
        )
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return InputGroup("files", files=(path,))
    if not explicit:
        return InputGroup("files")  # a glob also matched something else: skip it
    raise HistodetectError(
        f"{path} is not an image ({SUFFIXES_TEXT}), a patch store or a PCam _x.h5 file."
    )


def _check_readable(folder: Path) -> None:
    """Refuse a folder given as an input that cannot be listed (it was reported as its
    header.json)."""
    import os

    if not os.access(folder, os.R_OK | os.X_OK):
        raise HistodetectError(
            f"cannot read the folder {folder} (permission denied); fix its permissions, or "
            "leave it out of the inputs."
        )


def _folder_images(folder: Path, explicit: bool) -> tuple[Path, ...]:
    """Image files under `folder`, recursively, sorted, skipping hidden files and folders.

    A broken symbolic link with an image name is kept: it becomes a row with an error rather
    than vanishing from the output. Symbolic links to folders are not followed. A folder
    inside that cannot be listed is warned of by name, its files left out (`Path.rglob`,
    used before, skipped it in silence); only warned of, as a data disk's root holds a
    root-only lost+found.
    """
    import os
    import sys

    def unreadable(sub: Path) -> None:
        print(
            f"warning: cannot read the folder {sub} (permission denied); any patches in it "
            "are left out.",
            file=sys.stderr,
        )

    found = []
    for root, dirs, names in os.walk(folder, onerror=lambda e: unreadable(Path(e.filename))):
        here = Path(root)
        listable = []
        for name in dirs:
            sub = here / name
            if name.startswith("."):
                continue
            if not sub.is_symlink() and not os.access(sub, os.R_OK | os.X_OK):
                unreadable(sub)
            else:
                listable.append(name)
        dirs[:] = listable  # os.walk does not descend into symbolic links to folders
        for name in names:
            path = here / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.is_file() or (path.is_symlink() and not path.exists()):
                found.append(path)
    files = sorted(found)
    if not files and explicit:
        raise HistodetectError(
            f"{folder} holds no {SUFFIXES_TEXT} images (pass a PCam _x.h5 file or a patch "
            "store folder directly)."
        )
    return tuple(files)


def _store_group(path: Path) -> InputGroup:
    from histodetect.data.store import open_store

    store = open_store(path)  # checks the header, manifest and pixel file
    return InputGroup("store", path=path, count=len(store), size_px=int(store.pixels.shape[1]))


def _h5_group(path: Path) -> InputGroup:
    with open_h5(path) as f:
        if "x" not in f:
            hint = " (a PCam _y file holds labels; pass the _x file)" if "y" in f else ""
            raise HistodetectError(f"{path} has no dataset 'x' of patches{hint}.")
        x = f["x"]
        if x.ndim != 4 or x.shape[3] != 3 or x.shape[1] != x.shape[2] or x.dtype != np.uint8:
            raise HistodetectError(
                f"{path} holds {x.dtype} {x.shape} arrays, expected uint8 (N, 96, 96, 3)."
            )
        return InputGroup("h5", path=path, count=int(x.shape[0]), size_px=int(x.shape[1]))


def check_sizes(groups: Sequence[InputGroup], size_px: int, resize: bool, crop: bool) -> None:
    """Refuse stores and .h5 files whose patches the model cannot take as they are."""
    for side, path in ((g.size_px, g.path) for g in groups if g.kind != "files"):
        if side != size_px and not resize and not (crop and side > size_px):
            raise HistodetectError(
                f"{path} holds {side}x{side} px patches but the model takes "
                f"{size_px}x{size_px}; use --resize (or --center-crop for larger patches)."
            )


# ----------------------------------------------------------------------------- size policy


def fit_to_size(
    pixels: np.ndarray, size_px: int, resize: bool = False, center_crop: bool = False
) -> tuple[np.ndarray | None, str | None]:
    """(pixels, None) with (H, W, 3) brought to (size, size, 3), or (None, why it cannot be)."""
    h, w = pixels.shape[:2]
    if (h, w) == (size_px, size_px):
        return pixels, None
    if resize:
        from PIL import Image

        image = Image.fromarray(pixels).resize((size_px, size_px), Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.uint8), None
    if center_crop:
        if h < size_px or w < size_px:
            return None, f"is {w}x{h} px, smaller than the {size_px}x{size_px} centre crop"
        top, left = (h - size_px) // 2, (w - size_px) // 2
        return pixels[top : top + size_px, left : left + size_px], None
    return None, (
        f"is {w}x{h} px, expected {size_px}x{size_px}; use --resize or --center-crop "
        "(a whole slide goes to `histodetect slide`)"
    )


def decode_files(
    paths: Sequence[Path], size_px: int, resize: bool = False, center_crop: bool = False
) -> Batch:
    """Decode image files into one Batch (runs in a worker process)."""
    decoded = [decode_image(path, expected_px=None) for path in paths]
    ids, origins = [p.stem for p in paths], [str(p) for p in paths]
    return _fitted_batch(ids, origins, decoded, size_px, resize, center_crop)


def decode_buffers(
    files: Sequence[tuple[str, bytes]],
    size_px: int,
    resize: bool = False,
    center_crop: bool = False,
) -> Batch:
    """`decode_files` for (name, bytes) pairs held in memory (a service's uploads): the same
    decoding and fitting, without writing them to disk. Problems name the files by `name`."""
    decoded = [decode_image_bytes(data, name, expected_px=None) for name, data in files]
    names = [name for name, _ in files]
    return _fitted_batch(
        [Path(n).stem for n in names], names, decoded, size_px, resize, center_crop
    )


def _fitted_batch(
    ids: list[str],
    origins: list[str],
    decoded: Sequence[Decoded],
    size_px: int,
    resize: bool,
    center_crop: bool,
) -> Batch:
    """One Batch of the decoded images that fit `size_px` (errors listed for the others)."""
    pixels = np.empty((len(decoded), size_px, size_px, 3), dtype=np.uint8)
    errors: list[str | None] = []
    notes: list[str | None] = []
    n_ok = 0
    for one in decoded:
        image, reason = one.pixels, one.problem.reason if one.problem else None
        converted = one.problem is not None and one.problem.kind == CONVERTED
        error, note = (None, reason) if converted else (reason, None)
        notes.append(note)
        if image is not None and error is None:
            image, error = fit_to_size(image, size_px, resize, center_crop)
        if image is not None and error is None:
            pixels[n_ok] = image
            n_ok += 1
        errors.append(error)
    return Batch(ids, origins, errors, pixels[:n_ok], notes)


def _fit_array(pixels: np.ndarray, size_px: int, resize: bool, crop: bool) -> np.ndarray:
    if pixels.shape[1] == size_px:
        return pixels
    fitted = [fit_to_size(p, size_px, resize, crop)[0] for p in pixels]
    return np.stack([p for p in fitted if p is not None]).astype(np.uint8, copy=False)


# ----------------------------------------------------------------------------- reading


def iter_batches(
    groups: Sequence[InputGroup],
    size_px: int,
    *,
    resize: bool = False,
    center_crop: bool = False,
    workers: int = 1,
) -> Iterator[Batch]:
    """Read every group in order; image files are decoded by `workers` processes."""
    if resize and center_crop:
        raise HistodetectError("choose one of --resize and --center-crop, not both.")
    check_sizes(groups, size_px, resize, center_crop)
    for group in groups:
        if group.kind == "files":
            chunks = [
                group.files[i : i + FILES_PER_TASK]
                for i in range(0, len(group.files), FILES_PER_TASK)
            ]
            decode = partial(decode_files, size_px=size_px, resize=resize, center_crop=center_crop)
            yield from ordered_map(decode, chunks, workers)
        else:
            for ids, paths, pixels in _iter_arrays(group):
                fitted = _fit_array(pixels, size_px, resize, center_crop)
                yield Batch(ids, paths, [None] * len(ids), fitted)


def _iter_arrays(group: InputGroup) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """(ids, paths, uint8 pixels) slices of a store or an .h5 x file, never all at once."""
    assert group.path is not None
    if group.kind == "store":
        from histodetect.data.store import open_store

        store = open_store(group.path)
        for start in range(0, len(store), ROWS_PER_READ):
            stop = min(start + ROWS_PER_READ, len(store))
            ids = [str(i) for i in store.manifest.ids[start:stop]]
            paths = [f"{group.path}#{row}" for row in range(start, stop)]
            yield ids, paths, np.array(store.pixels[start:stop], dtype=np.uint8)
        return
    with open_h5(group.path) as f:
        x = f["x"]
        for start in range(0, group.count, ROWS_PER_READ):
            stop = min(start + ROWS_PER_READ, group.count)
            rows = range(start, stop)
            paths = [f"{group.path}#{row}" for row in rows]
            yield [str(row) for row in rows], paths, read_rows(x, start, stop, group.path)
