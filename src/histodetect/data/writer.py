"""StoreWriter: streams patches into a new store folder, atomically (temp dir, then rename)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from histodetect import __version__
from histodetect.data.patch import PATCH_SIZE_PX, patch_ids
from histodetect.data.quality import duplicate_groups
from histodetect.data.store import (
    HEADER_FILE,
    MANIFEST_FILE,
    PIXELS_FILE,
    STORE_FORMAT_VERSION,
    Manifest,
    PatchStore,
)
from histodetect.errors import HistodetectError

TEMP_MARKER = ".tmp-"


class StoreWriter:
    """Write a PatchStore in one pass, never leaving a half-written store behind.

    Everything goes into a hidden sibling folder `.<name>.tmp-<random>`; `finish()` writes the
    manifest and header and renames it to the destination. Leaving the `with` block by an
    exception (or Ctrl-C) deletes the temporary folder. Temporary folders of killed runs are
    removed by the next writer to the same destination.

    Example:
        with StoreWriter(out) as writer:
            writer.add(pixels, labels, splits, slides, origins, flags)
            store = writer.finish({"source": "..."})
    """

    def __init__(self, out: Path | str, *, overwrite: bool = False) -> None:
        self.out = Path(out)
        if (
            self.out.exists()
            and not overwrite
            and (not self.out.is_dir() or any(self.out.iterdir()))
        ):
            raise HistodetectError(
                f"{self.out} already exists; choose another --out or pass --overwrite."
            )
        self.overwrite = overwrite
        self.tmp = self.out.parent / f".{self.out.name}{TEMP_MARKER}{uuid.uuid4().hex[:8]}"
        self._columns: dict[str, list[Any]] = {k: [] for k in Manifest.__dataclass_fields__}
        self._pixels_file: Any = None
        self._seen: set[str] = set()

    def __enter__(self) -> StoreWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(self.out)
        self.tmp.mkdir()
        self._pixels_file = (self.tmp / PIXELS_FILE).open("wb")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pixels_file is not None:
            self._pixels_file.close()
        if self.tmp.exists():  # finish() renamed it away on success
            shutil.rmtree(self.tmp, ignore_errors=True)

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

    def finish(self, header_extra: dict[str, Any]) -> PatchStore:
        """Write manifest and header, move the store into place and open it."""
        self._pixels_file.close()
        self._pixels_file = None
        manifest = self.manifest()
        manifest.write_csv(self.tmp / MANIFEST_FILE)
        header = {**_header(manifest), **header_extra}
        (self.tmp / HEADER_FILE).write_text(json.dumps(header, indent=2) + "\n")
        _move_into_place(self.tmp, self.out, self.overwrite)
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


def store_fingerprint(manifest: Manifest) -> str:
    """SHA-1 over ids, labels and splits, in order."""
    h = hashlib.sha1()
    for pid, label, split in zip(
        manifest.ids, manifest.labels.tolist(), manifest.splits, strict=True
    ):
        h.update(f"{pid},{label},{split}\n".encode())
    return h.hexdigest()


def _header(manifest: Manifest) -> dict[str, Any]:
    """Counts per split and class, class balance, fingerprint and format version."""
    counts: dict[str, dict[str, int]] = {}
    for split in sorted(set(manifest.splits.tolist())):
        labels = manifest.labels[manifest.splits == split]
        counts[split or "(none)"] = {
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


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename tmp to out; with overwrite, the old store is replaced only once the new is complete."""
    if out.exists():
        if not overwrite:
            raise HistodetectError(f"{out} appeared while ingesting; nothing was overwritten.")
        old = out.parent / f".{out.name}{TEMP_MARKER}old-{uuid.uuid4().hex[:8]}"
        out.replace(old)
        tmp.replace(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(out)


def _remove_stale_temps(out: Path) -> None:
    """Delete temporary folders left by a killed writer to the same destination."""
    for stale in out.parent.glob(f".{out.name}{TEMP_MARKER}*"):
        shutil.rmtree(stale, ignore_errors=True)
