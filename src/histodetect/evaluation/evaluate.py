"""evaluate(): score a store split with a model, fit calibration on another split, write the report."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histodetect.atomic import atomic_dir
from histodetect.data.store import (
    PatchStore,
    open_store,
    split_display,
)
from histodetect.errors import HistodetectError
from histodetect.evaluation.calibration import (
    choose_threshold,
    fit_temperature,
    fitted_id_sample,
    parse_threshold_method,
    probabilities,
    temperature_warning,
    tta_mismatch_note,
)
from histodetect.evaluation.eval_splits import (
    EvalSplit,
    Evaluated,
    resolve_split,
    role_with_calibration,
    run_dir_of,
)
from histodetect.evaluation.metrics import compute_metrics
from histodetect.evaluation.report_folder import METRICS_FILE, check_report_folder, metrics_json
from histodetect.inference.backends import N_TTA_VIEWS
from histodetect.inference.backends.onnx import is_onnx_path
from histodetect.inference.predictor import OpenedModel, open_model
from histodetect.inference.scoring import pick_device, require_finite, score_array
from histodetect.models.checkpoint import MODEL_FILE, LoadedModel, load_checkpoint, update_spec


def _score(
    loaded: Evaluated,
    store: PatchStore,
    rows: np.ndarray,
    tta: bool,
    device: str,
    batch_size: int,
    precision: str = "auto",
) -> np.ndarray:
    return _logits(loaded, store.read(rows), tta, device, batch_size, precision)


def _logits(loaded: Evaluated, pixels: np.ndarray, tta: bool, device: str, batch_size: int,
            precision: str) -> np.ndarray:  # fmt: skip
    """Raw logits of uint8 patches, (n,) or (n, 8) with TTA; NaN or inf is an error."""
    if isinstance(loaded, OpenedModel):  # ONNX Runtime, opened on its device already
        parts = [loaded.backend.logits(pixels[i : i + batch_size], tta)
                 for i in range(0, len(pixels), batch_size)]  # fmt: skip
        empty = np.zeros((0, N_TTA_VIEWS) if tta else (0,), dtype=np.float32)
        logits = np.concatenate(parts) if parts else empty
    else:
        logits = score_array(loaded.model, loaded.spec, pixels, tta=tta, batch_size=batch_size,
                             device=pick_device(device), precision=precision)  # fmt: skip
    return require_finite(logits, loaded.path)


def _refuse_the_bundled_model(path: Path) -> None:
    """Calibration rewrites the model file: never the one installed with histodetect."""
    from histodetect.modelfiles import bundled_model_path

    try:
        bundled = bundled_model_path().resolve()
    except HistodetectError:  # an installation without one
        return
    if path.resolve() == bundled:
        raise HistodetectError(
            f"{path} is the model installed with histodetect, which calibrate would rewrite; "
            "copy it (e.g. cp it to my_model.pt) and calibrate the copy."
        )


def calibrate(loaded: LoadedModel, store: PatchStore, split: EvalSplit, method: str, tta: bool,
              device: str = "auto", batch_size: int = 256, precision: str = "auto",
              save: bool = True) -> LoadedModel:  # fmt: skip
    """Fit temperature and threshold on `split`; save them into the model file's ModelSpec
    (with `save=False` the caller saves them, with `save_calibration`, once its work is done)."""
    parse_threshold_method(method)  # a bad --threshold fails before any scoring
    check_batch_size(batch_size)
    _check_two_classes(store, split)
    if loaded.path.name != MODEL_FILE and loaded.path.suffix != ".pt":
        raise HistodetectError(
            f"calibration is saved into a {MODEL_FILE}; {loaded.path} is a training checkpoint."
        )
    _refuse_the_bundled_model(loaded.path)
    logits = _score(loaded, store, split.indices, tta, device, batch_size, precision)
    labels = store.manifest.labels[split.indices].astype(int)
    temperature = fit_temperature(logits, labels)
    warning = temperature_warning(temperature)
    if warning is not None:
        print(f"warning: {loaded.path}: {warning}", file=sys.stderr)
    threshold = choose_threshold(labels, probabilities(logits, temperature), method)
    spec = loaded.spec.replace(temperature=temperature, threshold=threshold)
    calibration = {"store_fingerprint": store.fingerprint, "split": split.name, "method": method,
                   "tta": tta, "temperature": temperature, "threshold": threshold,
                   **fitted_id_sample(store.manifest.ids[split.indices])}  # fmt: skip
    calibrated = LoadedModel(
        loaded.model, spec, loaded.path, {**loaded.metadata, "calibration": calibration}
    )
    if save:
        save_calibration(calibrated)
    return calibrated


def save_calibration(calibrated: LoadedModel) -> None:
    """Write a fitted calibration (`calibrate`) into its model file."""
    update_spec(calibrated.path, calibrated.spec,
                {"calibration": calibrated.metadata["calibration"]})  # fmt: skip


@dataclass(frozen=True)
class EvaluateOptions:
    """How to evaluate: split reported, TTA, optional calibration split and threshold rule."""

    split: str = "valid"
    tta: bool = False
    calibrate_on: str | None = None
    threshold: str = "youden"
    device: str = "auto"
    batch_size: int = 256
    precision: str = "auto"
    n_boot: int = 1000
    shifts: tuple[str, ...] = ()
    shift_seed: int = 0
    overwrite: bool = False


def evaluate(model: Path | str | None, store_path: Path | str, out_dir: Path | str,
             options: EvaluateOptions | None = None) -> dict[str, Any]:  # fmt: skip
    """Evaluate a model on one split of a store; write metrics.json, report.html and plots.

    Raises:
        HistodetectError: unknown split, no labels, or calibration asked on the reported split.
    """
    opts = options or EvaluateOptions()
    out = Path(out_dir)
    check_report_folder(out, opts.overwrite)  # before calibration changes the model file
    check_batch_size(opts.batch_size)
    if opts.n_boot < 1:
        raise HistodetectError(f"--bootstrap must be at least 1 resample, got {opts.n_boot}.")
    if opts.calibrate_on is not None and opts.calibrate_on == opts.split:
        raise HistodetectError(
            f"the threshold and temperature must be fitted on another split than the one reported; "
            f"use --calibrate-on valid with --split test (not both {opts.split})."
        )
    loaded = _load(model, opts)
    store = open_store(store_path)
    split = resolve_split(store, opts.split, loaded)  # every check before calibration saves
    _check_two_classes(store, split)
    calibrated: LoadedModel | None = None
    if opts.calibrate_on is not None:
        fitted_on = resolve_split(store, opts.calibrate_on, loaded)
        _check_disjoint(fitted_on, split, opts)
        # saved into the model file only once the report is in place: a failure below (an
        # unusable --out, Ctrl-C during --shift) had already replaced its calibration
        assert isinstance(loaded, LoadedModel)  # _load refuses --calibrate-on for ONNX
        loaded = calibrated = calibrate(loaded, store, fitted_on, opts.threshold, opts.tta, opts.device,
                           opts.batch_size, opts.precision, save=False)  # fmt: skip
    else:
        note = tta_mismatch_note(loaded.metadata, opts.tta, loaded.path)
        if note is not None:
            print(note, file=sys.stderr)
    logits = _score(loaded, store, split.indices, opts.tta, opts.device, opts.batch_size,
                    opts.precision)  # fmt: skip
    probs = probabilities(logits, loaded.spec.temperature)
    labels = store.manifest.labels[split.indices].astype(int)
    slides = store.manifest.slides[split.indices]
    metrics = compute_metrics(
        labels, probs, loaded.spec.threshold, loaded.spec.class_names, slides, opts.n_boot
    )
    metrics.update(_context(loaded, store, split, opts))
    if opts.shifts:
        metrics["shifts"] = _shift_robustness(loaded, store, split, labels, opts)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out, replace=opts.overwrite) as tmp:  # all files appear at once, or none
        (tmp / METRICS_FILE).write_text(metrics_json(metrics))
        _write_report(tmp, metrics, labels, probs, store, split, loaded)
    if calibrated is not None:
        save_calibration(calibrated)
    return metrics


def _load(model: Path | str | None, opts: EvaluateOptions) -> Evaluated:
    """The model to evaluate; an .onnx file runs in ONNX Runtime (its calibration is fixed)."""
    if not is_onnx_path(model):
        return load_checkpoint(model)
    if opts.calibrate_on is not None:
        raise HistodetectError(
            f"{model} is an ONNX model, whose temperature is fixed in its graph, so "
            "--calibrate-on cannot recalibrate it; calibrate the model.pt it was exported from "
            "and export it again, or evaluate without --calibrate-on."
        )
    return open_model(model, opts.device, opts.precision)


def _check_disjoint(fitted_on: EvalSplit, reported: EvalSplit, opts: EvaluateOptions) -> None:
    """Refuse calibration on patches the report also scores: only the option strings were
    compared, so `--calibrate-on all --split test` (or `val` with `valid`) fitted the threshold
    on the test patches and reported them as a held-out split."""
    shared = np.intersect1d(fitted_on.indices, reported.indices).size
    if shared:
        raise HistodetectError(
            f"--calibrate-on {opts.calibrate_on} and --split {opts.split} share {shared:,} "
            "patches; fit the threshold and temperature on a split disjoint from the one "
            "reported (e.g. --calibrate-on valid --split test)."
        )


def check_batch_size(batch_size: int) -> None:
    """Refuse a --batch-size below 1 (before any scoring)."""
    if batch_size < 1:
        raise HistodetectError(f"--batch-size must be at least 1, got {batch_size}.")


def _check_two_classes(store: PatchStore, split: EvalSplit) -> None:
    labels = store.manifest.labels[split.indices]
    n_tumour, n_normal = int((labels == 1).sum()), int((labels == 0).sum())
    if n_tumour == 0 or n_normal == 0:
        raise HistodetectError(
            f"split {split_display(split.name)} of {store.root} has {n_normal} normal and {n_tumour} tumour "
            "patches; AUC and a report need both classes (use `histodetect predict` to score "
            "one-class data)."
        )


def _shift_robustness(loaded: Evaluated, store: PatchStore, split: EvalSplit,
                      labels: np.ndarray, opts: EvaluateOptions) -> dict[str, Any]:  # fmt: skip
    """AUC of the same split under each seeded shift (see `histodetect.evaluation.shifts`)."""
    from histodetect.evaluation.shifts import shifted_aucs

    def score(pixels: np.ndarray) -> np.ndarray:
        logits = _logits(loaded, pixels, opts.tta, opts.device, opts.batch_size, opts.precision)
        return probabilities(logits, loaded.spec.temperature)

    pixels = store.read(split.indices)
    results = shifted_aucs(score, pixels, labels, opts.shifts, opts.shift_seed, opts.n_boot)
    return {"seed": opts.shift_seed, "results": results}


def _context(
    loaded: Evaluated, store: PatchStore, split: EvalSplit, opts: EvaluateOptions
) -> dict[str, Any]:
    cal = loaded.metadata.get("calibration") or {}
    return {
        "split": split.name,
        "split_role": role_with_calibration(split, loaded, store),
        "warnings": list(split.warnings),
        "temperature": loaded.spec.temperature,
        "threshold_method": cal.get("method"),
        "tta": opts.tta,
        "model": str(loaded.path),
        "model_name": loaded.spec.model_name,
        "store": str(store.root),
        "store_fingerprint": store.fingerprint,
    }


def _overlays(loaded: Evaluated, pixels: np.ndarray) -> list[np.ndarray]:
    from histodetect.explain.gradcam import gradcam_overlays

    if isinstance(loaded, OpenedModel):  # shown as a note in the report
        raise HistodetectError(f"{loaded.path} runs in ONNX Runtime, which gives no gradients "
                               "here; evaluate the model.pt it was exported from for them.")  # fmt: skip

    return gradcam_overlays(loaded.model, loaded.spec, pixels)


def _write_report(out: Path, metrics: dict[str, Any], labels: np.ndarray, probs: np.ndarray,
                  store: PatchStore, split: EvalSplit, loaded: Evaluated) -> Path:  # fmt: skip
    from histodetect.evaluation.report import ReportInputs, write_report
    from histodetect.training.metrics_log import read_epoch_metrics

    run_dir = run_dir_of(loaded)
    inputs = ReportInputs(
        metrics=metrics,
        labels=labels,
        probabilities=probs,
        ids=store.manifest.ids[split.indices],
        origins=store.manifest.origins[split.indices],
        read_pixels=lambda idx: store.read(split.indices[np.asarray(idx)]),
        training_curves=read_epoch_metrics(run_dir) if run_dir else {},
        explain_pixels=lambda pixels: _overlays(loaded, pixels),
    )
    return write_report(out, inputs)
