"""Train/validation splits: official, slide-grouped, stratified random; and the leak check."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from histodetect.data.store import PatchStore, canonical_split
from histodetect.errors import HistodetectError
from histodetect.wording import plural

RANDOM_SPLIT_WARNING = (
    "random split of patches without slide ids: the same slide (and near-identical tissue) lands "
    "in both train and validation, so validation metrics will be optimistic (random-split AUC "
    "about 0.99 against 0.92-0.94 with slides grouped on Kaggle data)."
)


class OptimisticSplitWarning(UserWarning):
    """Validation shares slides with training; its metrics overstate performance."""


@dataclass(frozen=True)
class Split:
    """Row indices into a store for training and validation, and how they were chosen.

    Attributes:
        train: int64 indices of training patches.
        valid: int64 indices of validation patches.
        method: "official", "slide-grouped" or "stratified-random".
        slide_disjoint: True when no slide contributes to both sides.
    """

    train: np.ndarray
    valid: np.ndarray
    method: str
    slide_disjoint: bool


def stratified_split(
    labels: np.ndarray, valid_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a random split that keeps the class balance (the original recipe).

    The validation side holds `valid_fraction` of the patches (rounded up, as sklearn does),
    and at least one patch of each class.
    """
    positions = np.arange(len(labels))
    train, valid = train_test_split(
        positions, test_size=_n_valid(labels, valid_fraction), stratify=labels, random_state=seed
    )
    return np.sort(train), np.sort(valid)


def slide_grouped_split(
    labels: np.ndarray, slides: np.ndarray, valid_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a split where every slide lies wholly on one side, class balance kept roughly."""
    n_groups = len(np.unique(slides))
    if n_groups < 2:
        raise HistodetectError("a slide-grouped split needs patches from at least 2 slides.")
    n_folds = max(2, min(n_groups, round(1 / valid_fraction)))
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    train, valid = next(folds.split(np.zeros(len(labels)), labels, groups=slides))
    return np.sort(train), np.sort(valid)


def choose_split(store: PatchStore, valid_fraction: float = 0.1, seed: int = 0) -> Split:
    """Pick the honest split a store allows.

    The store's own `valid` split when it has one (official PCam splits, split folders); else a
    slide-grouped split of the labelled patches when slides are known; else a stratified random
    split, with an `OptimisticSplitWarning`. Unlabelled patches are never used.
    """
    m = store.manifest
    labelled = m.labels >= 0
    # Stores ingested before split names were made canonical may hold `Val` or `Train`.
    names, which = np.unique(m.splits, return_inverse=True)
    splits = np.array([canonical_split(str(n)) for n in names], dtype=object)[which]
    if (splits[labelled] == "valid").any():
        train = np.flatnonzero(labelled & (splits == "train"))
        if len(train) == 0:
            train = np.flatnonzero(labelled & (splits != "valid") & (splits != "test"))
        valid = np.flatnonzero(labelled & (splits == "valid"))
        split = Split(train, valid, "official", _slides_apart(m.slides, train, valid))
    else:
        pool = np.flatnonzero(labelled & (splits != "test"))
        if len(pool) < 4:
            raise HistodetectError(
                f"{store.root} has only {plural(len(pool), 'labelled patch')} to split."
            )
        _check_splittable(m.labels[pool], valid_fraction, store)
        if (m.slides[pool] != "").all() and len(np.unique(m.slides[pool])) >= 2:
            t, v = slide_grouped_split(m.labels[pool], m.slides[pool], valid_fraction, seed)
            split = Split(pool[t], _without_copies(m.ids, pool[t], pool[v]), "slide-grouped", True)
        else:
            warnings.warn(RANDOM_SPLIT_WARNING, OptimisticSplitWarning, stacklevel=2)
            t, v = stratified_split(m.labels[pool], valid_fraction, seed)
            split = Split(
                pool[t], _without_copies(m.ids, pool[t], pool[v]), "stratified-random", False
            )
    check_no_leak(store, split.train, split.valid)
    return split


def _slides_apart(slides: np.ndarray, train: np.ndarray, valid: np.ndarray) -> bool:
    """Whether a store's own split keeps every slide on one side: computed where both sides
    name their slides (it was claimed for any store with a valid split, so a CSV whose train
    and valid rows share slides trained with no optimistic-validation warning); a split whose
    slides are not named is taken as the user gave it."""
    train_slides, valid_slides = slides[train], slides[valid]
    if (train_slides == "").any() or (valid_slides == "").any():
        return True
    return not np.intersect1d(train_slides, valid_slides).size


def _without_copies(ids: np.ndarray, train: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`valid` less the patches whose pixels also lie in `train`: a split this module drew put
    copies of one patch (a folder of patches with duplicates, as PCam's train has) on both
    sides, and `check_no_leak` then refused the store for a leak the split itself made. Left
    out of validation (not moved to training) so that a slide-grouped split stays disjoint."""
    copies = np.isin(ids[valid], ids[train])
    if copies.all():
        raise HistodetectError(
            "every validation patch the split drew is a copy of a training patch (the same "
            "pixels); ingest with --drop-duplicates, or give the store a valid split."
        )
    if copies.any():
        warnings.warn(
            f"{plural(int(copies.sum()), 'validation patch', 'validation patches')} "
            f"{'is a copy' if copies.sum() == 1 else 'are copies'} of training patches (the same "
            "pixels) and left out of validation; `histodetect ingest --drop-duplicates` removes "
            "copies for good.",
            stacklevel=3,
        )
    return valid[~copies]


def _check_splittable(labels: np.ndarray, valid_fraction: float, store: PatchStore) -> None:
    """Raise one sentence where a split cannot hold every class on both sides."""
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() >= 2 and len(labels) - _n_valid(labels, valid_fraction) >= len(classes):
        return
    per_class = ", ".join(
        f"{plural(int(k), 'patch', 'patches')} of class {c}"
        for c, k in zip(classes, counts, strict=True)
    )
    raise HistodetectError(
        f"{store.root} has too few labelled patches to hold out {valid_fraction:g} for validation "
        f"({per_class}): a split needs at least 2 patches of each class and some left to train "
        "on; add patches, change --valid-fraction, or ingest a store with a valid split."
    )


def _n_valid(labels: np.ndarray, valid_fraction: float) -> int:
    """Patches to hold out: the fraction rounded up, and at least one per class."""
    return max(len(np.unique(labels)), int(np.ceil(valid_fraction * len(labels))))


def check_no_leak(store: PatchStore, train: np.ndarray, valid: np.ndarray) -> None:
    """Raise when any patch (by pixel id) appears on both sides of a split."""
    shared = np.intersect1d(store.manifest.ids[train], store.manifest.ids[valid])
    if len(shared):
        raise HistodetectError(
            f"leak: {plural(len(shared), 'patch')} {'appears' if len(shared) == 1 else 'appear'} "
            "in both training and validation "
            f"(e.g. {shared[0]}); ingest with --drop-duplicates or fix the splits."
        )


def warn_if_trained_on_another_split(
    what: str, metadata: dict[str, Any], store: PatchStore, split: Split
) -> None:
    """Warn when a model (`what`: "the teacher runs/a", "--init runs/a"), whose training
    `metadata` are given, was trained on `store` with another split than `split`: it may have
    trained on patches `split` validates on, which makes validation figures optimistic."""
    if metadata.get("store_fingerprint") != store.fingerprint or "n_valid" not in metadata:
        return
    theirs = (metadata.get("split_method"), metadata.get("n_valid"))
    if theirs != (split.method, len(split.valid)):
        warnings.warn(
            f"{what} was trained on this store with another split ({theirs[0]}, {theirs[1]} "
            f"validation patches; this run: {split.method}, {len(split.valid)}), so it may "
            "have trained on patches this run validates on, which would make the validation "
            "figures optimistic; give both the same --seed and --valid-fraction",
            OptimisticSplitWarning,
            stacklevel=3,
        )
