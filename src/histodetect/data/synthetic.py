"""Deterministic synthetic H&E-like 96x96 patches that follow the PatchCamelyon centre label rule."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tifffile
from tqdm import tqdm

from histodetect.atomic import atomic_dir
from histodetect.data.patch import CENTRE_START_PX, PATCH_SIZE_PX, patch_id
from histodetect.data.synthetic_tissue import (
    CENTRE_STOP_PX,
    KIND_DECOY,
    KIND_NORMAL,
    KIND_TUMOUR,
    make_slide_stain,
    render_patch,
)
from histodetect.errors import HistodetectError

__all__ = ["PATCH_SIZE_PX", "SyntheticPatches", "generate_patches", "write_kaggle_layout"]

DECOY_FRACTION_OF_NEGATIVES = 0.4  # negatives that carry tumour cells outside the centre box
PATCHES_PER_SLIDE = 100  # default slide size when n_slides is not given


@dataclass(frozen=True)
class SyntheticPatches:
    """A batch of synthetic patches with their labels and ground truth.

    Attributes:
        pixels: (n, 96, 96, 3) uint8 RGB patches.
        labels: (n,) int8, 1 when a tumour nucleus pixel lies in rows/cols 32..63, else 0.
        slides: (n,) str synthetic slide ids such as ``synth-slide-007``.
        tumour_masks: (n, 96, 96) bool, True where a tumour nucleus pixel lies.
    """

    pixels: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int8]
    slides: npt.NDArray[np.str_]
    tumour_masks: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        """Number of patches."""
        return int(self.labels.shape[0])


def generate_patches(
    n: int, seed: int = 0, positive_fraction: float = 0.4, n_slides: int | None = None
) -> SyntheticPatches:
    """Draw ``n`` synthetic H&E-like patches; the same arguments give byte-identical output.

    Args:
        n: Number of patches (>= 1).
        seed: Non-negative random seed.
        positive_fraction: Share of patches with label 1, in [0, 1]; rounded to a whole count.
        n_slides: Number of synthetic slides; default ``max(min(n, 4), n // 100)``.

    Returns:
        The patches, labels, slide ids and tumour-nucleus masks.
    """
    _check_generate_args(n, seed, positive_fraction, n_slides)
    slide_count = n_slides if n_slides is not None else max(min(n, 4), n // PATCHES_PER_SLIDE)
    kinds, slide_index = _plan_patches(n, seed, positive_fraction, slide_count)
    stains = [make_slide_stain(seed, j) for j in range(slide_count)]
    pixels = np.empty((n, PATCH_SIZE_PX, PATCH_SIZE_PX, 3), dtype=np.uint8)
    masks = np.empty((n, PATCH_SIZE_PX, PATCH_SIZE_PX), dtype=bool)
    for i in range(n):
        rng = np.random.default_rng([seed, 2, i])
        pixels[i], masks[i] = render_patch(rng, int(kinds[i]), stains[slide_index[i]])
    width = max(3, len(str(slide_count - 1)))
    names = np.array([f"synth-slide-{j:0{width}d}" for j in range(slide_count)])
    centre = masks[:, CENTRE_START_PX:CENTRE_STOP_PX, CENTRE_START_PX:CENTRE_STOP_PX]
    labels = np.asarray(centre.any(axis=(1, 2)), dtype=np.int8)
    return SyntheticPatches(pixels, labels, names[slide_index], masks)


def _check_generate_args(n: int, seed: int, positive_fraction: float, n_slides: int | None) -> None:
    """Raise HistodetectError with one sentence when an argument is out of range."""
    if not _is_whole(n) or n < 1:
        raise HistodetectError(f"n must be a whole number >= 1, got {n}.")
    if not _is_whole(seed) or seed < 0:
        raise HistodetectError(f"seed must be a whole number >= 0, got {seed}.")
    if not 0.0 <= positive_fraction <= 1.0:
        raise HistodetectError(f"positive_fraction must lie in [0, 1], got {positive_fraction}.")
    if n_slides is not None and (not _is_whole(n_slides) or n_slides < 1):
        raise HistodetectError(f"n_slides must be a whole number >= 1, got {n_slides}.")


def _is_whole(value: object) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), not a bool or float."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _plan_patches(
    n: int, seed: int, positive_fraction: float, slide_count: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Choose each patch's kind (normal, decoy, tumour) and slide index, both shuffled, shape (n,)."""
    rng = np.random.default_rng([seed, 0])
    n_positive = round(n * positive_fraction)
    n_decoy = round((n - n_positive) * DECOY_FRACTION_OF_NEGATIVES)
    kinds = np.full(n, KIND_NORMAL, dtype=np.int64)
    kinds[:n_positive] = KIND_TUMOUR
    kinds[n_positive : n_positive + n_decoy] = KIND_DECOY
    kinds = rng.permutation(kinds)
    slide_index = rng.permutation(np.arange(n, dtype=np.int64) % slide_count)
    return kinds, slide_index


def write_kaggle_layout(
    out_dir: Path,
    n: int,
    seed: int = 0,
    test_fraction: float = 0.1,
    positive_fraction: float = 0.4,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``n`` synthetic patches in the Kaggle competition layout, atomically.

    Writes ``train/<id>.tif``, ``train_labels.csv`` (id,label), ``train_slides.csv`` (id,slide),
    ``test/<id>.tif``, ``sample_submission.csv`` (id,label all 0) and ``README.md`` into a
    temporary sibling directory, then renames it to ``out_dir`` (see `histodetect.atomic`).

    Args:
        out_dir: Destination; must not exist or be an empty directory.
        n: Total number of patches (train + test), >= 1.
        seed: Non-negative random seed; same arguments give identical files.
        test_fraction: Share of patches written unlabelled to ``test/``, in [0, 1).
        positive_fraction: Share of label-1 patches, in [0, 1].
        progress: Show a tqdm bar over files written.

    Returns:
        Summary with keys out_dir, n_train, n_test, n_positive_train, seed.
    """
    out_dir = Path(out_dir)
    n_test = _check_layout_args(out_dir, n, test_fraction)
    patches = generate_patches(n, seed=seed, positive_fraction=positive_fraction)
    with atomic_dir(out_dir) as tmp_dir:
        _write_layout_files(tmp_dir, patches, n - n_test, progress)
        (tmp_dir / "README.md").write_text(
            _readme_text(seed, n - n_test, n_test, patches), encoding="utf-8"
        )
    return {
        "out_dir": str(out_dir),
        "n_train": n - n_test,
        "n_test": n_test,
        "n_positive_train": int(patches.labels[: n - n_test].sum()),
        "seed": seed,
    }


def _check_layout_args(out_dir: Path, n: int, test_fraction: float) -> int:
    """Validate the layout arguments and destination; return the number of test patches."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise HistodetectError(f"{out_dir} already exists; choose another --out or delete it.")
    if not 0.0 <= test_fraction < 1.0:
        raise HistodetectError(f"test_fraction must lie in [0, 1), got {test_fraction}.")
    if not _is_whole(n) or n < 1:
        raise HistodetectError(f"n must be a whole number >= 1, got {n}.")
    n_test = round(n * test_fraction)
    if n - n_test < 1:
        raise HistodetectError(f"n={n} with test_fraction={test_fraction} leaves no train patch.")
    return n_test


def _write_layout_files(
    root: Path, patches: SyntheticPatches, n_train: int, progress: bool
) -> None:
    """Write the tif files and csv tables under ``root``; the first ``n_train`` patches are train."""
    (root / "train").mkdir()
    (root / "test").mkdir()
    ids = [patch_id(p) for p in patches.pixels]
    bar = tqdm(total=len(ids), desc="writing patches", unit="file", disable=not progress)
    with bar:
        for i, pid in enumerate(ids):
            folder = "train" if i < n_train else "test"
            tifffile.imwrite(root / folder / f"{pid}.tif", patches.pixels[i], photometric="rgb")
            bar.update(1)
    labels = [str(int(v)) for v in patches.labels[:n_train]]
    _write_csv(root / "train_labels.csv", ("id", "label"), zip(ids[:n_train], labels, strict=True))
    slides = [str(s) for s in patches.slides[:n_train]]
    _write_csv(root / "train_slides.csv", ("id", "slide"), zip(ids[:n_train], slides, strict=True))
    test_rows = [(pid, "0") for pid in ids[n_train:]]
    _write_csv(root / "sample_submission.csv", ("id", "label"), test_rows)


def _write_csv(path: Path, header: Sequence[str], rows: Any) -> None:
    """Write a csv file with ``header`` then ``rows`` (an iterable of string tuples)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _readme_text(seed: int, n_train: int, n_test: int, patches: SyntheticPatches) -> str:
    """Markdown text describing a written synthetic data set."""
    n_positive = int(patches.labels[:n_train].sum())
    n_slides = len(set(patches.slides.tolist()))
    return (
        "# Synthetic histodetect patches\n\n"
        "These images are SYNTHETIC, drawn by `histodetect.data.synthetic`; they are not real\n"
        "tissue and are no substitute for the Kaggle / PatchCamelyon data.\n\n"
        f"- seed: {seed}\n"
        f"- train patches: {n_train} ({n_positive} positive), test patches: {n_test}\n"
        f"- synthetic slides: {n_slides} (see `train_slides.csv`)\n"
        "- layout: `train/<id>.tif`, `train_labels.csv`, `test/<id>.tif`,"
        " `sample_submission.csv`; id = SHA-1 of the 96x96x3 uint8 pixel bytes\n\n"
        "Label rule (as PCam): label 1 iff at least one tumour-nucleus pixel lies in the centre\n"
        "32x32 px (rows/cols 32..63). Some negatives carry tumour cells only outside that box.\n"
    )
