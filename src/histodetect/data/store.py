"""PatchStore: a read-only memory map of uint8 patches plus their manifest and header."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histodetect.atomic import is_temp_name
from histodetect.data.patch import PATCH_SIZE_PX
from histodetect.errors import HistodetectError

STORE_FORMAT_VERSION = 1
PIXELS_FILE = "pixels.u8"
MANIFEST_FILE = "manifest.csv"
HEADER_FILE = "header.json"
MANIFEST_COLUMNS = ("id", "label", "split", "slide", "origin", "dup_group", "flags")
UNLABELLED = -1
"""Label value of a patch whose class is unknown (Kaggle test, PCam test without _y)."""
LABEL_TEXTS = ("-1", "0", "1")
UNNAMED_SPLIT = ""
"""Split of patches given without one (class folders 0/ and 1/ directly under the source)."""
UNNAMED_SPLIT_LABEL = "(none)"
"""How the unnamed split is shown: its key in header.json's counts and in every message."""
INSPECT_DIR = "inspect"
INSPECT_FILES = ("inspect.md", "samples.png", "class_balance.png")
STORE_ENTRIES = (PIXELS_FILE, MANIFEST_FILE, HEADER_FILE, "ingest_report.json", "ingest_report.md")
"""Everything a store folder holds (besides the `inspect/` report folder)."""


SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                 "validation": "valid", "test": "test", "testing": "test"}  # fmt: skip
"""Split names `train`, `evaluate` and `calibrate` know, by any common spelling (case aside)."""


def canonical_split(name: str) -> str:
    """The split name a store keeps for `name` as a folder or CSV gave it: `Val`, `VALID` and
    `validation` are all `valid` (else training would not find the validation split and would
    train on those patches); names it does not know are kept as given."""
    return SPLIT_ALIASES.get(name.strip().lower(), name)


def split_display(name: str) -> str:
    """A split's name as messages show it: the unnamed split is "(none)", never an empty string."""
    return name if name != UNNAMED_SPLIT else UNNAMED_SPLIT_LABEL


@dataclass(frozen=True)
class Manifest:
    """One row per patch, column-wise. Empty strings mean "unknown" for split, slide and flags.

    Attributes:
        ids: SHA-1 hex digest of each patch's pixels.
        labels: int8, 1 tumour, 0 normal, -1 unlabelled.
        splits: split name of each patch ("train", "valid", "test"), "" when none was given.
        slides: slide id when known, else "".
        origins: where the patch came from: a file path or "file.h5#row".
        dup_groups: int32 index of the exact-duplicate group the patch belongs to, -1 if unique.
        flags: ";"-joined quality flags ("dark", "bright", "uniform"), "" when clean.
    """

    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    slides: np.ndarray
    origins: np.ndarray
    dup_groups: np.ndarray
    flags: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def write_csv(self, path: Path) -> None:
        """Write the manifest as CSV with a header row."""
        # UTF-8 whatever the locale (read_csv reads it so); a file name that is not UTF-8 (a
        # Latin-1 byte, as iterdir gives it) is written escaped: it crashed the whole ingest
        with path.open("w", newline="", encoding="utf-8", errors="backslashreplace") as f:
            writer = csv.writer(f)
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows(
                zip(
                    self.ids,
                    self.labels.tolist(),
                    self.splits,
                    self.slides,
                    self.origins,
                    self.dup_groups.tolist(),
                    self.flags,
                    strict=True,
                )
            )

    @classmethod
    def read_csv(cls, path: Path) -> Manifest:
        """Read a manifest written by `write_csv`, refusing rows it could not have written."""
        try:
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None or tuple(header) != MANIFEST_COLUMNS:
                    raise HistodetectError(f"{path} is not a histodetect manifest (bad header).")
                rows = list(reader)
        except UnicodeDecodeError as exc:  # histodetect writes UTF-8: an edit or a damaged copy
            raise _damaged(path, f"byte {exc.start} is not UTF-8 text") from None
        for line, row in enumerate(rows, start=2):
            if len(row) != len(MANIFEST_COLUMNS):
                raise _damaged(
                    path, f"line {line} has {len(row)} fields, not {len(MANIFEST_COLUMNS)}"
                )
        cols = list(zip(*rows, strict=True)) if rows else [()] * len(MANIFEST_COLUMNS)
        labels = np.array(cols[1], dtype=str)
        bad = np.flatnonzero(~np.isin(labels, LABEL_TEXTS))
        if len(bad):
            reason = f"line {bad[0] + 2} has label {str(labels[bad[0]])!r} (a label is 0, 1 or -1)"
            raise _damaged(path, reason)
        try:
            dup_groups = np.array(cols[5], dtype=np.int32)
        except ValueError as exc:
            raise _damaged(path, "its dup_group column holds a value that is not a number") from exc
        return cls(
            ids=np.array(cols[0], dtype=str),
            labels=labels.astype(np.int8),
            splits=np.array(cols[2], dtype=str),
            slides=np.array(cols[3], dtype=str),
            origins=np.array(cols[4], dtype=str),
            dup_groups=dup_groups,
            flags=np.array(cols[6], dtype=str),
        )


def _damaged(path: Path, reason: str) -> HistodetectError:
    return HistodetectError(f"{path} is damaged: {reason}; ingest the data again.")


def store_fingerprint(manifest: Manifest) -> str:
    """SHA-1 over ids, labels and splits, in order."""
    rows = zip(
        manifest.ids.tolist(), manifest.labels.tolist(), manifest.splits.tolist(), strict=True
    )
    text = "".join(f"{pid},{label},{split}\n" for pid, label, split in rows)
    return hashlib.sha1(text.encode()).hexdigest()


class PatchStore:
    """A packed patch store on disk, opened read-only.

    Layout of the folder: `pixels.u8` (raw uint8, N x 96 x 96 x 3, row-major), `manifest.csv`
    (one row per patch, see `Manifest`) and `header.json` (format version, source, counts,
    fingerprint). Pixels are memory-mapped, so reading a batch never decodes an image.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.header: dict[str, Any] = _read_header(self.root)
        manifest_path = self.root / MANIFEST_FILE
        if not manifest_path.is_file():
            raise _damaged(self.root, f"it has {HEADER_FILE} but no {MANIFEST_FILE}")
        self.manifest = Manifest.read_csv(manifest_path)
        n = int(self.header["n_patches"])
        if len(self.manifest) != n:
            reason = f"it has {len(self.manifest)} rows but {HEADER_FILE} says {n} patches"
            raise _damaged(manifest_path, reason)
        if store_fingerprint(self.manifest) != self.header["fingerprint"]:
            reason = (
                f"its ids, labels or splits differ from those recorded in {HEADER_FILE} "
                "(the manifest was edited or damaged after ingest)"
            )
            raise _damaged(manifest_path, reason)
        self.pixels: np.ndarray = _open_pixels(self.root / PIXELS_FILE, n)

    def __len__(self) -> int:
        return len(self.manifest)

    def __repr__(self) -> str:
        return f"PatchStore({str(self.root)!r}, n={len(self)}, splits={self.split_names})"

    @property
    def fingerprint(self) -> str:
        """SHA-1 over the ids, labels and splits in order: identifies the data a model saw."""
        return str(self.header["fingerprint"])

    @property
    def split_names(self) -> list[str]:
        """Names of the splits present, in first-seen order ("" when none given)."""
        _, first = np.unique(self.manifest.splits, return_index=True)
        return [str(self.manifest.splits[i]) for i in sorted(first)]

    @property
    def has_slides(self) -> bool:
        """True when every labelled patch has a slide id."""
        labelled = self.manifest.labels != UNLABELLED
        return bool(labelled.any() and (self.manifest.slides[labelled] != "").all())

    def indices(self, split: str | None = None, *, labelled: bool | None = None) -> np.ndarray:
        """Row indices of patches in `split` (all when None), optionally only (un)labelled ones."""
        mask = np.ones(len(self), dtype=bool)
        if split is not None:
            mask &= self.manifest.splits == split
        if labelled is not None:
            mask &= (self.manifest.labels != UNLABELLED) == labelled
        return np.flatnonzero(mask)

    def read(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Copy the patches at `indices` into RAM as uint8 (n, 96, 96, 3), in the order given.

        One gather from the memory map: no decoding, no per-patch Python. (Sorting the indices
        first and restoring the order afterwards measured 3x slower: the second copy costs more
        than the page cache saves.)
        """
        idx = np.asarray(indices, dtype=np.int64)
        return np.asarray(self.pixels)[idx]


def _read_header(root: Path) -> dict[str, Any]:
    """header.json as a dict, checked for the format version and the keys every reader needs."""
    path = root / HEADER_FILE
    if not path.is_file():
        raise HistodetectError(
            f"{root} is not a patch store (no {HEADER_FILE}); create one with `histodetect ingest`."
        )
    header = _header_json(path)
    if header is None:
        raise _damaged(
            path, "it is not a histodetect store header (valid JSON with format_version)"
        )
    version = header["format_version"]
    if not _is_whole(version):
        raise _damaged(path, f"its format_version {version!r} is not a whole number")
    if version != STORE_FORMAT_VERSION:
        raise HistodetectError(
            f"{root} has store format {version}, this histodetect reads "
            f"{STORE_FORMAT_VERSION}; ingest the data again."
        )
    missing = [k for k in ("n_patches", "fingerprint", "counts") if k not in header]
    if missing or not isinstance(header["n_patches"], int):
        raise _damaged(path, f"it lacks {', '.join(missing) or 'a whole n_patches'}")
    fraction = header.get("tumour_fraction")
    if not _counts_ok(header["counts"]) or not (fraction is None or _is_number(fraction)):
        raise _damaged(path, "its counts or tumour_fraction are not what ingest writes")
    return header


COUNT_KEYS = ("total", "tumour", "normal", "unlabelled")
"""What header.json's counts hold for each split (data.writer)."""


def _counts_ok(counts: object) -> bool:
    """header.json's counts as ingest writes them: per split, a whole number per `COUNT_KEYS`."""
    return isinstance(counts, dict) and all(
        isinstance(c, dict) and all(k in c and _is_whole(c[k]) for k in COUNT_KEYS)
        for c in counts.values()
    )


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _header_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path` when it has a format_version key (any version), else None."""
    try:
        header = json.loads(path.read_bytes())
    except (OSError, ValueError):  # ValueError: not UTF-8 or not JSON
        return None
    return header if isinstance(header, dict) and "format_version" in header else None


def looks_like_store(folder: Path) -> bool:
    """True when `folder` has a store's header.json (whatever else it holds)."""
    header = _header_json(folder / HEADER_FILE)
    return header is not None and "fingerprint" in header


def check_not_in_store(out: Path, what: str, option: str = "--out") -> None:
    """Refuse an --out that is a patch store or lies anywhere inside one: a store holds only
    what ingest wrote, and a folder of other outputs in it made `ingest --overwrite` refuse to
    replace the store ("holds something histodetect did not write").

    Raises:
        HistodetectError: naming --out, the store and what to do.
    """
    path = out.resolve()  # `..` and links as the file system sees them: `store/../x` is not in it
    for folder in (path, *path.parents):
        if looks_like_store(folder):
            where = (
                "is the patch store" if folder == path else f"lies inside the patch store {folder},"
            )
            raise HistodetectError(
                f"{option} {out} {where} which holds only what ingest wrote; write the {what} "
                "elsewhere."
            )


def not_a_store_reason(folder: Path) -> str | None:
    """None when `folder` is a store histodetect wrote and nothing else; else why it is not.

    Recognised by its own files (header.json with a store format version and fingerprint,
    manifest.csv, pixels.u8); any other entry (besides the reports that ingest and inspect put
    there) means the folder holds something histodetect did not write. Checked before replacing.
    """
    header = _header_json(folder / HEADER_FILE)
    if header is None or "fingerprint" not in header:
        return f"has no histodetect {HEADER_FILE}"
    for name in (MANIFEST_FILE, PIXELS_FILE):
        if not (folder / name).is_file():
            return f"has no {name}"
    for entry in sorted(folder.iterdir()):
        if entry.name in STORE_ENTRIES or is_temp_name(entry.name):
            continue
        if (
            entry.name == INSPECT_DIR
            and entry.is_dir()
            and not foreign_entries(entry, INSPECT_FILES)
        ):
            continue
        return f"also holds {entry.name}, which histodetect did not write"
    return None


def foreign_entries(folder: Path, known: tuple[str, ...]) -> list[str]:
    """Names in `folder`, sorted, other than `known` files and histodetect temporaries."""
    names = (p.name for p in folder.iterdir())
    return sorted(n for n in names if n not in known and not is_temp_name(n))


def _open_pixels(path: Path, n: int) -> np.ndarray:
    """Memory-map the pixel file read-only, checking its size matches n patches."""
    shape = (n, PATCH_SIZE_PX, PATCH_SIZE_PX, 3)
    expected = int(np.prod(shape))
    if not path.is_file():
        raise HistodetectError(
            f"{path} is missing, so the store is incomplete; ingest the data again."
        )
    actual = path.stat().st_size
    if actual != expected:
        raise HistodetectError(
            f"{path} is damaged: expected {expected} bytes for {n} patches, found {actual}."
        )
    if n == 0:
        return np.zeros(shape, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r", shape=shape)


def open_store(path: Path | str) -> PatchStore:
    """Open the patch store at `path` (a folder made by `histodetect ingest`)."""
    return PatchStore(path)
