"""Classification metrics as pure functions of labels and probabilities (no model, no I/O)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    roc_auc_score,
)

from histodetect.errors import HistodetectError

EPS = 1e-7


def require_finite_probabilities(probs: np.ndarray) -> None:
    """Raise when any probability is NaN/inf or outside [0, 1]: never score a broken model."""
    probs = np.asarray(probs, dtype=np.float64)
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        n_bad = int((~np.isfinite(probs) | (probs < 0) | (probs > 1)).sum())
        raise HistodetectError(
            f"{n_bad} of {len(probs)} probabilities are NaN, infinite or outside [0, 1]; the "
            "model is broken (a diverged run?) and cannot be scored."
        )


def compute_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC AUC, or None when only one class is present.

    Raises:
        HistodetectError: non-finite probabilities (they must never turn into a score).
    """
    require_finite_probabilities(probs)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, probs))


def bootstrap_auc_ci(
    labels: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the ROC AUC, resampling with replacement within each
    class (stratified, as pROC does): every resample has both classes and the split's class
    balance. Resampling all patches together dropped the one-class resamples in silence, and
    raised IndexError when all were dropped (one tumour among 100 patches)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    aucs = []
    for _ in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        aucs.append(roc_auc_score(labels[idx], probs[idx]))
    lo, hi = np.percentile(aucs, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


MIN_SLIDES_FOR_CI = 5
"""Slides below which no slide-level interval is given (resampling 2-4 slides says little)."""


def slide_bootstrap_auc_ci(
    labels: np.ndarray, probs: np.ndarray, slides: np.ndarray, n_boot: int = 1000,
    seed: int = 0, level: float = 0.95,
) -> tuple[float, float] | None:  # fmt: skip
    """Percentile bootstrap interval of the AUC that resamples whole slides (a cluster
    bootstrap): patches of one slide are alike, so resampling patches alone gives an interval
    too narrow for new slides. Resamples that draw one class only are drawn again; None with
    fewer than `MIN_SLIDES_FOR_CI` slides, or when most resamples hold one class."""
    labels, slides = np.asarray(labels), np.asarray(slides)
    names, which = np.unique(slides, return_inverse=True)
    if len(names) < MIN_SLIDES_FOR_CI or len(np.unique(labels)) < 2:
        return None
    members = [np.flatnonzero(which == k) for k in range(len(names))]
    rng = np.random.default_rng(seed)
    aucs: list[float] = []
    for _ in range(20 * n_boot):  # a bound: one-class resamples are drawn again
        idx = np.concatenate([members[k] for k in rng.integers(0, len(names), len(names))])
        if len(np.unique(labels[idx])) == 2:
            aucs.append(roc_auc_score(labels[idx], probs[idx]))
            if len(aucs) == n_boot:
                break
    if len(aucs) < n_boot:
        return None
    lo, hi = np.percentile(aucs, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE: mean |accuracy - confidence| over equal-width probability bins, weighted by bin size;
    NaN for no patches. The one ECE: the report's reliability diagram shows this figure."""
    labels, probs = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    if probs.size == 0:
        return float("nan")
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(labels[in_bin].mean() - probs[in_bin].mean())
    return float(ece)


def negative_log_likelihood(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of the probabilities (nats)."""
    p = np.clip(probs, EPS, 1 - EPS)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def threshold_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, balanced accuracy, sensitivity, specificity, precision, F1, confusion matrix."""
    pred = (probs >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel().tolist()
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    precision = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {
        "accuracy": float((pred == labels).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred))
        if len(np.unique(labels)) > 1
        else float("nan"),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": precision,
        "f1": f1,
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def classification_reports(
    labels: np.ndarray, probs: np.ndarray, threshold: float, class_names: tuple[str, str]
) -> tuple[dict[str, Any], str]:
    """scikit-learn's classification report (dict and text) at `threshold`, as the write-up showed."""
    pred = (probs >= threshold).astype(int)
    kwargs = {"labels": [0, 1], "target_names": list(class_names), "digits": 4, "zero_division": 0}
    return (
        classification_report(labels, pred, output_dict=True, **kwargs),
        str(classification_report(labels, pred, **kwargs)),
    )


def per_slide_metrics(
    labels: np.ndarray, probs: np.ndarray, slides: np.ndarray, threshold: float
) -> list[dict[str, Any]]:
    """Accuracy, AUC (when both classes occur) and mean probability for each slide."""
    rows = []
    for slide in np.unique(slides):
        m = slides == slide
        y, p = labels[m], probs[m]
        rows.append({
            "slide": str(slide),
            "n": int(m.sum()),
            "n_positive": int(y.sum()),
            "accuracy": float(((p >= threshold).astype(int) == y).mean()),
            "auc": compute_auc(y, p),
            "mean_probability": float(p.mean()),
        })  # fmt: skip
    return rows


def compute_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    class_names: tuple[str, str] = ("normal", "tumour"),
    slides: np.ndarray | None = None,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Every figure of the evaluation report for labels (n,) in {0,1} and probabilities (n,)."""
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    require_finite_probabilities(probs)
    report, report_text = classification_reports(labels, probs, threshold, class_names)
    ci = bootstrap_auc_ci(labels, probs, n_boot=n_boot)
    metrics: dict[str, Any] = {
        "n": len(labels),
        "n_positive": int(labels.sum()),
        "threshold": float(threshold),
        "auc": compute_auc(labels, probs),
        "auc_ci95": list(ci) if ci else None,
        **threshold_metrics(labels, probs, threshold),
        "nll": negative_log_likelihood(labels, probs),
        "ece": expected_calibration_error(labels, probs),
        "brier": float(np.mean((probs - labels) ** 2)),
        "classification_report": report,
        "classification_report_text": report_text,
    }
    if slides is not None and len(slides) and (slides != "").all():
        metrics["per_slide"] = per_slide_metrics(labels, probs, slides, threshold)
        slide_ci = slide_bootstrap_auc_ci(labels, probs, slides, n_boot=n_boot)
        metrics["auc_ci95_slides"] = list(slide_ci) if slide_ci else None
    return metrics
