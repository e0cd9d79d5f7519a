"""StoreWriter: streams patches into a new store folder, atomically (temp dir, then rename)."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from histodetect import __version__
from histodetect.atomic import move_into_place, output_lock, temp_sibling
from histodetect.data.patch import PATCH_SIZE_PX, patch_ids
from histodetect.data.quality import duplicate_groups
from histodetect.data.store import (
    HEADER_FILE,
    MANIFEST_FILE,
    PIXELS_FILE,
    STORE_FORMAT_VERSION,
    UNLABELLED,
    Manifest,
    PatchStore,
    not_a_store_reason,
    split_display,
    store_fingerprint,
)
from histodetect.errors import HistodetectError


class StoreWriter:
    """Write a PatchStore in one pass, never leaving a half-written store behind.

    Everything goes into a hidden sibling folder `.<name>.tmp-<random>`; `finish()` writes the
    manifest and header and renames it to the destination. Leaving the `with` block by an
    exception (or Ctrl-C) deletes the temporary folder. The `with` block holds the lock on the
    destination (a second writer is refused); temporary folders of killed runs are removed by
    the next writer to the same destination. See `check_store_destination` for what `overwrite`
    may replace.

    Example:
        with StoreWriter(out) as writer:
            writer.add(pixels, labels, splits, slides, origins, flags)
            store = writer.finish({"source": "..."})
    """

    def __init__(
        self, out: Path | str, *, overwrite: bool = False, inputs: Sequence[Path] = ()
    ) -> None:
        self.out = Path(out)
        check_store_destination(self.out, overwrite, inputs)
        self.overwrite = overwrite
        self.tmp = temp_sibling(self.out)
        self._columns: dict[str, list[Any]] = {k: [] for k in Manifest.__dataclass_fields__}
        self._pixels_file: Any = None
        self._seen: set[str] = set()
        self._lock = contextlib.ExitStack()

    def __enter__(self) -> StoreWriter:
        self._lock.enter_context(output_lock(self.out))
        try:
            self.tmp.mkdir()
            self._pixels_file = (self.tmp / PIXELS_FILE).open("wb")
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self._pixels_file is not None:
            self._pixels_file.close()
            self._pixels_file = None
        if self.tmp.exists():  # finish() renamed it away on success
            shutil.rmtree(self.tmp, ignore_errors=True)
        self._lock.close()

    def __len__(self) -> int:
        return len(self._columns["ids"])

    def contains(self, pid: str) -> bool:
        """True when a patch with this id was already added."""
        return pid in self._seen

    def add(
        self,
        pixels: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        splits: Sequence[str],
        slides: Sequence[str],
        origins: Sequence[str],
        flags: Sequence[str],
        ids: Sequence[str] | None = None,
    ) -> None:
        """Append a block of patches.

        Args:
            pixels: uint8 (n, 96, 96, 3).
            labels: 1, 0 or -1 (unlabelled) per patch.
            splits, slides, origins, flags: one string per patch ("" when unknown).
            ids: SHA-1 digests when the caller already computed them.
        """
        if pixels.dtype != np.uint8 or pixels.shape[1:] != (PATCH_SIZE_PX, PATCH_SIZE_PX, 3):
            raise ValueError(
                f"expected uint8 (n, 96, 96, 3) pixels, got {pixels.dtype} {pixels.shape}"
            )
        ids = list(ids) if ids is not None else patch_ids(pixels)
        n = len(pixels)
        for name, values in (("labels", labels), ("splits", splits), ("slides", slides),
                             ("origins", origins), ("flags", flags), ("ids", ids)):  # fmt: skip
            if len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} patches")
        self._pixels_file.write(np.ascontiguousarray(pixels).tobytes())
        self._columns["ids"] += ids
        self._columns["labels"] += [int(v) for v in labels]
        self._columns["splits"] += list(splits)
        self._columns["slides"] += list(slides)
        self._columns["origins"] += list(origins)
        self._columns["flags"] += list(flags)
        self._seen.update(ids)

    def mark_unlabelled(self, ids: set[str], flag: str) -> int:
        """Make every added patch whose id is in `ids` unlabelled and add `flag` to its flags.

        Used for patches that must not be trained or evaluated on (e.g. conflicting labels).

        Returns:
            The number of patches marked.
        """
        c = self._columns
        rows = [i for i, pid in enumerate(c["ids"]) if pid in ids]
        for i in rows:
            c["labels"][i] = UNLABELLED
            c["flags"][i] = ";".join(f for f in (c["flags"][i], flag) if f)
        return len(rows)

    def finish(self, header_extra: dict[str, Any]) -> PatchStore:
        """Write manifest and header, move the store into place and open it."""
        self._pixels_file.close()
        self._pixels_file = None
        manifest = self.manifest()
        manifest.write_csv(self.tmp / MANIFEST_FILE)
        header = {**_header(manifest), **header_extra}
        (self.tmp / HEADER_FILE).write_text(json.dumps(header, indent=2) + "\n")
        check_store_destination(self.out, self.overwrite)  # again: it may have changed meanwhile
        move_into_place(self.tmp, self.out, replace=self.overwrite)
        return PatchStore(self.out)

    @property
    def temp_dir(self) -> Path:
        """The folder being written; extra files (reports) may be put here before finish()."""
        return self.tmp

    def manifest(self) -> Manifest:
        """The manifest of everything added so far, duplicate groups included."""
        c = self._columns
        ids = np.array(c["ids"], dtype=str)
        return Manifest(
            ids=ids,
            labels=np.array(c["labels"], dtype=np.int8),
            splits=np.array(c["splits"], dtype=str),
            slides=np.array(c["slides"], dtype=str),
            origins=np.array(c["origins"], dtype=str),
            dup_groups=duplicate_groups(ids),
            flags=np.array(c["flags"], dtype=str),
        )


def _header(manifest: Manifest) -> dict[str, Any]:
    """Counts per split and class, class balance, fingerprint and format version."""
    counts: dict[str, dict[str, int]] = {}
    for split in sorted(set(manifest.splits.tolist())):
        labels = manifest.labels[manifest.splits == split]
        counts[split_display(split)] = {
            "total": len(labels),
            "tumour": int((labels == 1).sum()),
            "normal": int((labels == 0).sum()),
            "unlabelled": int((labels == -1).sum()),
        }
    labelled = manifest.labels[manifest.labels >= 0]
    return {
        "format_version": STORE_FORMAT_VERSION,
        "histodetect_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n_patches": len(manifest),
        "patch_size_px": PATCH_SIZE_PX,
        "counts": counts,
        "tumour_fraction": float(labelled.mean()) if len(labelled) else None,
        "n_duplicate_groups": int(manifest.dup_groups.max() + 1) if len(manifest) else 0,
        "has_slides": bool((manifest.slides != "").any()),
        "fingerprint": store_fingerprint(manifest),
    }


def check_store_destination(out: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """Raise unless a store may be written at `out`.

    `out` may be a new path or an empty folder; with `overwrite`, also a store that histodetect
    wrote and that holds nothing else (see `not_a_store_reason`). Never a folder that holds one
    of `inputs`, a file, or a symbolic link.
    """
    for source in inputs:
        if _holds(out, source):
            raise HistodetectError(
                f"--out {out} holds the input {source}; choose an --out outside the input "
                "(nothing was changed)."
            )
    if out.is_symlink():
        raise HistodetectError(f"--out {out} is a symbolic link; name the folder itself.")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise HistodetectError(f"--out {out} is a file; choose a folder name.")
    reason = not_a_store_reason(out)
    if reason is not None:
        raise HistodetectError(
            f"{out} already exists and is not a patch store (it {reason}); choose another "
            "--out: --overwrite replaces only a store that histodetect wrote (nothing was deleted)."
        )
    if not overwrite:
        raise HistodetectError(
            f"{out} already exists (a patch store); pass --overwrite to replace it, or choose "
            "another --out."
        )


def _holds(folder: Path, path: Path) -> bool:
    """True when `path` is `folder` or lies inside it (symbolic links resolved)."""
    folder, path = folder.resolve(), path.resolve()
    return path == folder or folder in path.parents
