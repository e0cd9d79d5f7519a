"""Figures of the evaluation report: ROC, PR, reliability, confusion, training curves, galleries.

Each function draws one figure with matplotlib's Agg backend (imported inside the function, so
importing this module stays cheap), writes it as a PNG atomically (a hidden temporary sibling
from `histodetect.atomic`, then ``Path.replace``) and closes the figure. Sizes suit a page
column of about 500 px at dpi 100.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from histodetect.data.patch import CENTRE_SIZE_PX, CENTRE_START_PX

DPI = 100
"""Resolution of every figure: 5-inch figures come out 500 px wide."""

_ORDER = ("loss", "auc", "acc")
"""Training-curve panels drawn first, in this order; other metrics follow alphabetically."""

_TITLES = {"loss": "loss", "auc": "AUC", "acc": "accuracy"}
"""Panel titles for the usual metric stems; other stems are shown as they are."""


def _pyplot() -> Any:
    """Return matplotlib.pyplot with the non-interactive Agg backend selected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    """Write `fig` to `path` as a PNG via a temporary sibling, then close it."""
    from histodetect.atomic import temp_sibling

    plt = _pyplot()
    tmp = temp_sibling(path)
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _both_classes(labels: np.ndarray) -> bool:
    """True when `labels` holds at least one 0 and one 1 (ROC and PR need both)."""
    return bool(np.any(labels == 0) and np.any(labels == 1))


def _placeholder(ax: Any, message: str) -> None:
    """Write `message` in the middle of an empty axis."""
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=9, transform=ax.transAxes)


def plot_roc(labels: np.ndarray, probs: np.ndarray, threshold: float, path: Path) -> None:
    """Save the ROC curve with its AUC, the chance diagonal and the operating point.

    Args:
        labels: (n,) ints, 0 or 1.
        probs: (n,) tumour probabilities.
        threshold: a patch is called tumour when its probability is >= threshold.
        path: where the PNG goes.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    fig, ax = _pyplot().subplots(figsize=(5, 4.4))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if _both_classes(labels):
        fpr, tpr, _ = roc_curve(labels, probs)
        ax.plot(
            fpr, tpr, color="#5b2a86", lw=2, label=f"ROC (AUC = {roc_auc_score(labels, probs):.4f})"
        )
        pred = probs >= threshold
        op_fpr, op_tpr = pred[labels == 0].mean(), pred[labels == 1].mean()
        ax.plot(op_fpr, op_tpr, "o", color="#d62728", ms=8,
                label=f"threshold {threshold:.3f}: sens {op_tpr:.3f}, spec {1 - op_fpr:.3f}")  # fmt: skip
    else:
        _placeholder(ax, "ROC undefined: only one class present")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)", title="ROC curve")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_pr(labels: np.ndarray, probs: np.ndarray, threshold: float, path: Path) -> None:
    """Save the precision-recall curve with average precision, baseline and operating point.

    Args:
        labels: (n,) ints, 0 or 1.
        probs: (n,) tumour probabilities.
        threshold: a patch is called tumour when its probability is >= threshold.
        path: where the PNG goes.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    fig, ax = _pyplot().subplots(figsize=(5, 4.4))
    rate = float(labels.mean()) if labels.size else 0.0
    ax.axhline(rate, ls="--", color="grey", lw=1, label=f"baseline (positive rate {rate:.3f})")
    if _both_classes(labels):
        precision, recall, _ = precision_recall_curve(labels, probs)
        ap = average_precision_score(labels, probs)
        ax.plot(recall, precision, color="#5b2a86", lw=2, label=f"PR (AP = {ap:.4f})")
        pred = probs >= threshold
        if pred.any():
            op_p, op_r = labels[pred].mean(), pred[labels == 1].mean()
            ax.plot(op_r, op_p, "o", color="#d62728", ms=8,
                    label=f"threshold {threshold:.3f}: prec {op_p:.3f}, rec {op_r:.3f}")  # fmt: skip
    else:
        _placeholder(ax, "PR curve undefined: only one class present")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="recall (sensitivity)",
           ylabel="precision", title="Precision-recall curve")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_reliability(
    labels: np.ndarray, probs: np.ndarray, path: Path, n_bins: int = 10, ece: float | None = None
) -> None:
    """Save a reliability diagram (equal-width bins vs the diagonal) over a probability histogram.

    Args:
        labels: (n,) ints, 0 or 1.
        probs: (n,) tumour probabilities.
        path: where the PNG goes.
        n_bins: number of equal-width bins on [0, 1].
        ece: the ECE to show in the title; computed from these bins when None.
    """
    labels, probs = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    if ece is None:
        from histodetect.evaluation.metrics import expected_calibration_error

        ece = expected_calibration_error(labels, probs, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    used = [b for b in range(n_bins) if np.any(bins == b)]
    rate = [labels[bins == b].mean() for b in used]
    conf = [probs[bins == b].mean() for b in used]
    fig, (top, bottom) = _pyplot().subplots(2, 1, figsize=(5, 5.6), sharex=True,
                                            gridspec_kw={"height_ratios": [3, 1.3]})  # fmt: skip
    top.bar(edges[used], rate, width=1 / n_bins, align="edge", color="#c9b3e0",
            edgecolor="#5b2a86", label="fraction tumour in bin")  # fmt: skip
    top.plot(conf, rate, "o-", color="#5b2a86", ms=4, label="at mean predicted p")
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="observed fraction tumour", title=f"Reliability (ECE = {ece:.4f})")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    for label, colour, name in ((0, "#1f77b4", "normal (0)"), (1, "#d62728", "tumour (1)")):
        bottom.hist(probs[labels == label], bins=edges, histtype="step", lw=1.5, color=colour,
                    label=name, log=True)  # fmt: skip
    bottom.set(xlim=(0, 1), xlabel="predicted tumour probability", ylabel="patches (log)")
    bottom.set_ylim(top=max(bottom.get_ylim()[1], 1.0) * 30)  # headroom for the legend
    bottom.legend(loc="upper center", fontsize=8, ncol=2)
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(matrix: Any, class_names: list[str], path: Path) -> None:
    """Save the confusion matrix: counts and the share of each true class, rows = true class.

    Args:
        matrix: square counts, ``[[tn, fp], [fn, tp]]`` for two classes.
        class_names: one name per row/column, e.g. ``["normal", "tumour"]``.
        path: where the PNG goes.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    shares = counts / totals
    fig, ax = _pyplot().subplots(figsize=(4.6, 3.9))
    ax.imshow(shares, cmap="Purples", vmin=0, vmax=1)
    for (r, c), n in np.ndenumerate(counts):
        colour = "white" if shares[r, c] > 0.55 else "black"
        ax.text(c, r, f"{n:,}\n{shares[r, c]:.1%} of true", ha="center", va="center",
                color=colour, fontsize=10)  # fmt: skip
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names)
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix at the threshold")
    fig.tight_layout()
    _save(fig, path)


def _curve_panels(curves: dict[str, list[tuple[int, float]]]) -> list[tuple[str, list[str]]]:
    """Group series into panels: (title, keys); train_X and val_X share panel X; lr* last."""
    names: dict[str, list[str]] = {}
    lr = [k for k in sorted(curves) if k.lower().startswith("lr") and curves[k]]
    for key in sorted(curves):
        if key in lr or not curves[key]:
            continue
        stem = key.split("_", 1)[1] if key.startswith(("train_", "val_")) else key
        names.setdefault(stem, []).append(key)
    ordered = [s for s in _ORDER if s in names] + sorted(s for s in names if s not in _ORDER)
    panels = [
        (stem, sorted(names[stem], key=lambda k: not k.startswith("train_"))) for stem in ordered
    ]
    return panels + ([("learning rate", lr)] if lr else [])


def plot_training_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """Save training curves: one panel per metric (loss, AUC, accuracy, ...), train vs val per epoch.

    Args:
        curves: series name -> [(epoch, value)], e.g. ``{"train_loss": [(0, 0.6)], ...}``;
            names starting with "lr" go into a learning-rate panel with a log scale.
        path: where the PNG goes.
    """
    from matplotlib.ticker import MaxNLocator

    panels = _curve_panels(curves)
    cols = 2 if len(panels) > 1 else 1
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = _pyplot().subplots(rows, cols, figsize=(4.6 * cols, 3.0 * rows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels, strict=False):
        for key in keys:
            x, y = zip(*curves[key], strict=True)
            ax.plot(x, y, "o-" if len(x) < 30 else "-", ms=3, lw=1.5, label=key)
        if title == "learning rate" and all(v > 0 for k in keys for _, v in curves[k]):
            ax.set_yscale("log")
        ax.set(title=_TITLES.get(title, title), xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    if not panels:
        _placeholder(axes[0][0], "no training curves")
    fig.tight_layout()
    _save(fig, path)


def plot_gallery(pixels: np.ndarray, captions: list[str], title: str, path: Path) -> None:
    """Save a grid of patches, the centre 32x32 box drawn on each, a caption under each.

    Args:
        pixels: uint8 (k, 96, 96, 3).
        captions: k strings, e.g. probability and short id; newlines allowed.
        title: the figure title.
        path: where the PNG goes.
    """
    from matplotlib.patches import Rectangle

    k = len(pixels)
    cols = min(8, max(k, 1))
    rows = max(1, math.ceil(k / cols))
    fig, axes = _pyplot().subplots(rows, cols, figsize=(1.15 * cols + 0.2, 1.55 * rows + 0.45),
                                   squeeze=False)  # fmt: skip
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= k:
            ax.set_axis_off()
            continue
        ax.imshow(pixels[i])
        ax.add_patch(Rectangle((CENTRE_START_PX - 0.5, CENTRE_START_PX - 0.5), CENTRE_SIZE_PX,
                               CENTRE_SIZE_PX, fill=False, edgecolor="lime", lw=1))  # fmt: skip
        ax.set_xlabel(captions[i], fontsize=7, family="monospace")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
