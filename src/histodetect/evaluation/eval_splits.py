"""The split an evaluation reports and what it was used for: the store's own split, every
labelled patch, or a run's train/valid split re-drawn, and whether the model's calibration was
fitted on any of its patches (in this store, or by content in another)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histodetect.data.splits import choose_split
from histodetect.data.store import UNNAMED_SPLIT, PatchStore, canonical_split, split_display
from histodetect.errors import HistodetectError
from histodetect.evaluation.calibration import shared_by_sample
from histodetect.inference.predictor import OpenedModel
from histodetect.models.checkpoint import LoadedModel

Evaluated = LoadedModel | OpenedModel
"""A model evaluate scores: a PyTorch model.pt, checkpoint or run folder (`LoadedModel`), or an
exported model.onnx run by ONNX Runtime (`OpenedModel`; an int8 export's AUC is checked this
way). Both carry the spec, the file's path and its metadata (an export keeps its source's)."""

OPTIMISTIC = "this split is not slide-disjoint from training: every figure is optimistic"


@dataclass(frozen=True)
class EvalSplit:
    """Store rows of one evaluated split and what it was used for."""

    name: str
    indices: np.ndarray
    role: str
    warnings: tuple[str, ...] = ()


def run_dir_of(loaded: Evaluated) -> Path | None:
    """The training run folder a model file came from, when it is one."""
    folder = loaded.path.parent
    if loaded.path.suffix == ".ckpt":
        folder = folder.parent
    return folder if (folder / "config.json").is_file() else None


ALL_SPLITS = "all"
"""`--split all`: every labelled patch of the store, whatever its split."""


def resolve_split(store: PatchStore, name: str, loaded: Evaluated) -> EvalSplit:
    """Rows of split `name`: the store's own split, `all` labelled rows, or the run's
    train/valid split re-derived. A store without named splits is evaluated as a whole."""
    trained_here = loaded.metadata.get("store_fingerprint") == store.fingerprint
    only_unnamed = store.split_names == [UNNAMED_SPLIT]
    if name not in store.split_names and canonical_split(name) in store.split_names:
        name = canonical_split(name)  # --split val, Valid or validation: the store's `valid`
    if name == ALL_SPLITS or (only_unnamed and name == "valid" and not trained_here):
        role = "every labelled patch of the store"
        if trained_here:
            role += " (it includes the patches the model was trained on: figures are optimistic)"
        return EvalSplit(ALL_SPLITS, store.indices(None, labelled=True), role)
    labelled = store.indices(name, labelled=True)
    if len(labelled):
        role = "held-out split"
        if trained_here and name == "valid":
            role = "validation split (selected the best epoch)"
        if trained_here and name == "train":
            role = "training split: figures say how well the model fits, not how it generalises"
        return EvalSplit(name, labelled, role)
    if name in store.split_names:
        raise HistodetectError(
            f"split {split_display(name)} of {store.root} has no labels to evaluate against."
        )
    run_dir = run_dir_of(loaded)
    if name not in ("train", "valid") or run_dir is None or not trained_here:
        raise _no_such_split(store, name)
    from histodetect.training.config import TrainConfig

    config = TrainConfig.load(run_dir)
    split = choose_split(store, config.valid_fraction, config.seed)
    warnings = () if split.slide_disjoint else (OPTIMISTIC,)
    rows = split.valid if name == "valid" else split.train
    return EvalSplit(name, rows, f"the training run's {split.method} {name} split", warnings)


def role_with_calibration(split: EvalSplit, loaded: Evaluated, store: PatchStore) -> str:
    """The split's role, with a warning where the model's calibration was fitted on any of
    the reported patches: only the split names were compared, so `calibrate --split all` and
    then `evaluate --split test` reported the test split as held out."""
    shared, estimated = _calibrated_on_reported(split, loaded, store)
    if shared == len(split.indices) and not estimated:
        return (f"{split.role}; it also fitted the threshold and temperature, so threshold-dependent "
                "figures are optimistic (AUC is unaffected by either)")  # fmt: skip
    if shared:
        how = (" (matched by content against a sample of the calibration's patches, which "
               "another store held)") if estimated else ""  # fmt: skip
        return (f"{split.role}; {'about ' if estimated else ''}{shared:,} of its "
                f"{len(split.indices):,} patches{how} also fitted the threshold and temperature, "
                "so threshold-dependent figures are optimistic (AUC is unaffected by either)")  # fmt: skip
    return split.role


def _calibrated_on_reported(
    split: EvalSplit, loaded: Evaluated, store: PatchStore
) -> tuple[int, bool]:
    """How many of the reported patches the model's calibration was fitted on, and whether
    that is an estimate: on another store (a re-ingested copy, the same patches split
    otherwise) only the sample of patch ids the calibration keeps can be matched."""
    cal = loaded.metadata.get("calibration") or {}
    if not isinstance(cal.get("split"), str):
        return 0, False
    if cal.get("store_fingerprint") != store.fingerprint:
        return shared_by_sample(cal, store.manifest.ids[split.indices]), True
    if cal["split"] == split.name:
        return len(split.indices), False
    try:
        fitted_on = resolve_split(store, cal["split"], loaded)
    except HistodetectError:  # a split this store (or run) cannot name any more: by content
        return shared_by_sample(cal, store.manifest.ids[split.indices]), True
    return int(np.intersect1d(fitted_on.indices, split.indices).size), False


def _no_such_split(store: PatchStore, name: str) -> HistodetectError:
    """The refusal of a split `store` lacks, naming the ones it has."""
    names = ", ".join(split_display(n) for n in store.split_names)
    # from a README walk: an ensemble's or export's `--split valid` on such a store failed
    # with no word of why a run's own model.pt could use it
    why = (
        "; the train/valid split of a store without one is re-drawn only for the model.pt of a "
        "run folder trained on it (not an ensemble, export or copy)"
        if name in ("train", "valid")
        else ""
    )
    return HistodetectError(
        f"{store.root} has no split {name!r}{why}; it has: {names}; or use --split all."
    )
