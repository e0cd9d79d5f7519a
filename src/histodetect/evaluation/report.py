"""The self-contained HTML report of `histodetect evaluate`: figures embedded, no external requests.

`write_report` draws the figures (see `histodetect.evaluation.plots`) into the output folder and
assembles ``report.html``, in which every image is a base64 data URI and the CSS is inline, so
the one file can be mailed or archived on its own. Every file is written atomically.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from histodetect.atomic import write_text_atomic
from histodetect.errors import HistodetectError
from histodetect.evaluation import plots

REPORT_FILE = "report.html"
PER_SLIDE_ROWS = 50
"""The per-slide table shows this many slides, worst accuracy first."""

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;
margin:1.5em auto;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;border-bottom:1px solid #ddd;
padding-bottom:.2em;margin-top:1.6em}
.warnings{background:#fff3cd;border:2px solid #e0a800;border-radius:6px;padding:.6em 1em}
.warnings ul{margin:.3em 0;padding-left:1.2em}.role{background:#eef;border-radius:6px;
padding:.5em 1em}
table{border-collapse:collapse;font-size:.92em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:.7em;overflow-x:auto;font-size:.88em}
.figs{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}img{max-width:100%;height:auto}
.muted{color:#666;font-size:.9em}.none{font-style:italic;color:#555}
"""


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report shows about one evaluation.

    Attributes:
        metrics: the content of metrics.json.
        labels: (n,) ints 0/1 of the evaluated patches.
        probabilities: (n,) calibrated tumour probabilities.
        ids: (n,) str patch ids (SHA-1).
        origins: (n,) str source path or "file.h5#row".
        read_pixels: indices into the n patches -> uint8 (k, 96, 96, 3).
        training_curves: series name -> [(epoch, value)]; may be empty.
        explain_pixels: uint8 (k, 96, 96, 3) -> k Grad-CAM overlays (uint8 RGB), or None;
            when given, each error gallery gains a gallery of overlays.
    """

    metrics: dict[str, Any]
    labels: np.ndarray
    probabilities: np.ndarray
    ids: np.ndarray
    origins: np.ndarray
    read_pixels: Callable[[np.ndarray], np.ndarray]
    training_curves: dict[str, list[tuple[int, float]]]
    explain_pixels: Callable[[np.ndarray], list[np.ndarray]] | None = None


def most_confident_errors(
    labels: np.ndarray, probs: np.ndarray, threshold: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the indices of the most confident false positives and false negatives.

    A patch is called tumour when its probability is >= threshold. False positives are label-0
    patches called tumour, highest probability first; false negatives are label-1 patches called
    normal, lowest probability first. Ties keep index order. At most `k` of each.
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    fp = np.flatnonzero((labels == 0) & (probs >= threshold))
    fn = np.flatnonzero((labels == 1) & (probs < threshold))
    fp = fp[np.argsort(-probs[fp], kind="stable")][:k]
    fn = fn[np.argsort(probs[fn], kind="stable")][:k]
    return fp, fn


def _fmt(value: Any, digits: int = 4) -> str:
    """Format a number for the page; None and NaN become "n/a"."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "on" if value else "off"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


def _sort_number(value: Any) -> float:
    """A sort key for a number that may be None (sorted last)."""
    return math.inf if value is None else float(value)


def _img(path: Path, alt: str) -> str:
    """An <img> tag with the PNG at `path` embedded as a base64 data URI."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _figure(path: Path, alt: str, caption: str = "") -> str:
    """A <figure> with the embedded image and an optional (escaped) caption."""
    text = f'<figcaption class="muted">{escape(caption)}</figcaption>' if caption else ""
    return f"<figure>{_img(path, alt)}{text}</figure>"


def _header(m: dict[str, Any]) -> str:
    """Title, warnings box and split role."""
    title = f"histodetect evaluation: {m.get('model_name', '?')} on split {m.get('split', '?')}"
    parts = [f"<title>{escape(title)}</title></head><body><h1>{escape(title)}</h1>"]
    if m.get("warnings"):
        items = "".join(f"<li>{escape(str(w))}</li>" for w in m["warnings"])
        parts.append(f'<div class="warnings"><strong>Warnings</strong><ul>{items}</ul></div>')
    if m.get("split_role"):
        parts.append(f'<p class="role">Split role: {escape(str(m["split_role"]))}</p>')
    return "\n".join(parts)


def _slide_interval_row(m: dict[str, Any]) -> list[tuple[str, str]]:
    """The slide-resampled interval, where the split names its slides (see metrics)."""
    ci = m.get("auc_ci95_slides")
    if not ci:
        return []
    return [("AUC 95% CI, slides resampled", f"{_fmt(ci[0])} – {_fmt(ci[1])}")]


def _headline(m: dict[str, Any]) -> str:
    """The headline metrics table and the provenance lines."""
    ci = m.get("auc_ci95") or [None, None]
    method = f" ({m['threshold_method']})" if m.get("threshold_method") else ""
    rows = [
        ("AUC (95% CI)", f"{_fmt(m.get('auc'))} ({_fmt(ci[0])} – {_fmt(ci[1])})"),
        *_slide_interval_row(m),
        ("Accuracy", _fmt(m.get("accuracy"))),
        ("Balanced accuracy", _fmt(m.get("balanced_accuracy"))),
        ("Sensitivity (at threshold)", _fmt(m.get("sensitivity"))),
        ("Specificity (at threshold)", _fmt(m.get("specificity"))),
        ("Precision", _fmt(m.get("precision"))),
        ("F1", _fmt(m.get("f1"))),
        ("NLL", _fmt(m.get("nll"))),
        ("ECE", _fmt(m.get("ece"))),
        ("Brier score", _fmt(m.get("brier"))),
        ("Threshold", _fmt(m.get("threshold")) + method),
        ("Temperature", _fmt(m.get("temperature"))),
        ("Test-time augmentation", _fmt(bool(m.get("tta")))),
        ("Patches (of which tumour)", f"{_fmt(m.get('n'))} ({_fmt(m.get('n_positive'))})"),
    ]
    body = "".join(
        f'<tr><th>{escape(k)}</th><td class="num">{escape(v)}</td></tr>' for k, v in rows
    )
    where = f"Model: {m.get('model', '?')} · store: {m.get('store', '?')}"
    return f'<h2>Headline</h2><table>{body}</table><p class="muted">{escape(where)}</p>'


def _per_slide(m: dict[str, Any]) -> str:
    """The per-slide table, worst accuracy first, at most PER_SLIDE_ROWS rows; "" when absent."""
    slides = m.get("per_slide")
    if not slides:
        return ""
    worst = sorted(slides, key=lambda s: (_sort_number(s.get("accuracy")), str(s.get("slide"))))
    head = "".join(
        f"<th>{h}</th>" for h in ("slide", "patches", "tumour", "accuracy", "AUC", "mean p")
    )
    rows = []
    for s in worst[:PER_SLIDE_ROWS]:
        cells = [
            _fmt(s.get(key)) for key in ("n", "n_positive", "accuracy", "auc", "mean_probability")
        ]
        nums = "".join(f'<td class="num">{escape(c)}</td>' for c in cells)
        rows.append(f"<tr><td>{escape(str(s.get('slide', '')))}</td>{nums}</tr>")
    note = f"{min(len(slides), PER_SLIDE_ROWS)} of {len(slides)} slides, worst accuracy first."
    return f'<h2>Per slide</h2><p class="muted">{note}</p><table><tr>{head}</tr>{"".join(rows)}</table>'


def _shifts(m: dict[str, Any]) -> str:
    """AUC under each seeded image shift next to the unshifted AUC; "" when not asked for."""
    shifts = (m.get("shifts") or {}).get("results")
    if not shifts:
        return ""
    base = m.get("auc")
    rows = []
    for name, r in shifts.items():
        ci = r.get("auc_ci95") or [None, None]
        drop = r["auc"] - base if r.get("auc") is not None and base is not None else None
        rows.append(f"<tr><th>{escape(name)}</th><td class='num'>{_fmt(r.get('auc'))}</td>"
                    f"<td class='num'>{_fmt(ci[0])} – {_fmt(ci[1])}</td>"
                    f"<td class='num'>{_fmt(drop)}</td><td>{escape(str(r.get('description', '')))}</td></tr>")  # fmt: skip
    head = "<tr><th>shift</th><th>AUC</th><th>95% CI</th><th>change</th><th>what</th></tr>"
    seed = escape(str(m["shifts"].get("seed")))
    return (f"<h2>Robustness to image shifts (seed {seed})</h2><table>{head}{''.join(rows)}</table>"
            "<p class='muted'>The same patches re-stained, re-coloured, blurred, re-compressed or "
            "noised; a model that holds its AUC here is more likely to hold it on new slides.</p>")  # fmt: skip


def _gallery(out_dir: Path, inputs: ReportInputs, picks: np.ndarray, kind: str) -> str:
    """Draw and embed one error gallery (kind "false positives"/"false negatives") or say none."""
    path = out_dir / f"{kind.replace(' ', '_')}.png"
    if len(picks) == 0:
        path.unlink(missing_ok=True)
        return f'<h2>Most confident {kind}</h2><p class="none">No {kind} at this threshold.</p>'
    probs = np.asarray(inputs.probabilities, dtype=float)[picks]
    ids = [str(inputs.ids[i]) for i in picks]
    captions = [f"p={p:.3f}\n{i[:8]}" for p, i in zip(probs, ids, strict=True)]
    pixels = inputs.read_pixels(picks)
    plots.plot_gallery(pixels, captions, f"Most confident {kind}", path)
    overlays = _gradcam_gallery(out_dir, inputs, pixels, captions, kind)
    rows = "".join(
        f'<tr><td class="num">{int(i)}</td><td><code>{escape(pid)}</code></td>'
        f'<td class="num">{p:.4f}</td><td>{escape(str(inputs.origins[i]))}</td></tr>'
        for i, pid, p in zip(picks, ids, probs, strict=True)
    )
    table = f"<table><tr><th>#</th><th>id</th><th>p</th><th>origin</th></tr>{rows}</table>"
    return (
        f"<h2>Most confident {kind} ({len(picks)})</h2>"
        f"{_figure(path, kind, 'Green box: the centre 32x32 px that decides the label.')}"
        f"{overlays}<details><summary>ids and origins</summary>{table}</details>"
    )


def _gradcam_gallery(out_dir: Path, inputs: ReportInputs, pixels: np.ndarray,
                     captions: list[str], kind: str) -> str:  # fmt: skip
    """The Grad-CAM gallery of one error gallery's patches; "" (with a note) when unavailable."""
    path = out_dir / f"{kind.replace(' ', '_')}_gradcam.png"
    if inputs.explain_pixels is None:
        path.unlink(missing_ok=True)
        return ""
    try:
        overlays = np.stack(inputs.explain_pixels(pixels))
    except HistodetectError as exc:  # e.g. the explain extra (captum) is not installed
        path.unlink(missing_ok=True)
        return f'<p class="muted">No Grad-CAM overlays: {escape(str(exc))}</p>'
    plots.plot_gallery(overlays, captions, f"Grad-CAM of the {kind}", path)
    caption = "Grad-CAM: red = the pixels that drove the model's decision."
    return _figure(path, f"Grad-CAM of the {kind}", caption)


def _draw_figures(out_dir: Path, inputs: ReportInputs) -> dict[str, Path]:
    """Draw the metric figures and, when given, the training curves; return name -> path."""
    m = inputs.metrics
    labels, probs = np.asarray(inputs.labels), np.asarray(inputs.probabilities, dtype=float)
    threshold = float(m.get("threshold", 0.5))
    paths = {name: out_dir / f"{name}.png" for name in ("confusion", "roc", "pr", "reliability")}
    matrix = m.get("confusion_matrix") or _confusion(labels, probs, threshold)
    plots.plot_confusion(matrix, ["normal (0)", "tumour (1)"], paths["confusion"])
    plots.plot_roc(labels, probs, threshold, paths["roc"])
    plots.plot_pr(labels, probs, threshold, paths["pr"])
    ece = m.get("ece")
    plots.plot_reliability(
        labels, probs, paths["reliability"], ece=None if ece is None else float(ece)
    )
    curves_path = out_dir / "training_curves.png"
    if any(inputs.training_curves.get(k) for k in inputs.training_curves):
        plots.plot_training_curves(inputs.training_curves, curves_path)
        paths["training_curves"] = curves_path
    else:
        curves_path.unlink(missing_ok=True)
    return paths


def _confusion(labels: np.ndarray, probs: np.ndarray, threshold: float) -> list[list[int]]:
    """[[tn, fp], [fn, tp]] at the threshold (used when metrics lacks the matrix)."""
    pred = probs >= threshold
    return [[int(np.sum(~pred & (labels == t))), int(np.sum(pred & (labels == t)))] for t in (0, 1)]


FIGURES = ("confusion", "roc", "pr", "reliability", "training_curves")
GALLERIES = ("false_positives", "false_negatives")
REPORT_OUTPUTS = (
    REPORT_FILE,
    *(f"{name}.png" for name in FIGURES),
    *(f"{name}.png" for name in GALLERIES),
    *(f"{name}_gradcam.png" for name in GALLERIES),
)
"""Every file `write_report` may put in its folder (evaluate adds metrics.json)."""


def write_report(out_dir: Path, inputs: ReportInputs, gallery_size: int = 16) -> Path:
    """Draw every figure into `out_dir` and write the self-contained report.html; return its path.

    Args:
        out_dir: the folder, created if missing; figures land next to report.html as PNGs.
        inputs: metrics, per-patch results, a pixel reader and the training curves.
        gallery_size: at most this many patches in each error gallery.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = inputs.metrics
    figs = _draw_figures(out_dir, inputs)
    threshold = float(m.get("threshold", 0.5))
    fp, fn = most_confident_errors(inputs.labels, inputs.probabilities, threshold, gallery_size)
    curves = ""
    if "training_curves" in figs:
        curves = f"<h2>Training curves</h2>{_figure(figs['training_curves'], 'training curves')}"
    report_text = escape(str(m.get("classification_report_text", "")))
    body = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><style>{CSS}</style>',
        _header(m),
        _headline(m),
        f"<h2>Classification report</h2><pre>{report_text}</pre>",
        f"<h2>Confusion matrix</h2>{_figure(figs['confusion'], 'confusion matrix')}",
        f'<h2>Discrimination</h2><div class="figs">{_figure(figs["roc"], "ROC curve")}'
        f"{_figure(figs['pr'], 'precision-recall curve')}</div>",
        f"<h2>Calibration</h2>{_figure(figs['reliability'], 'reliability diagram')}",
        curves,
        _per_slide(m),
        _shifts(m),
        _gallery(out_dir, inputs, fp, "false positives"),
        _gallery(out_dir, inputs, fn, "false negatives"),
        "</body></html>\n",
    ]
    path = out_dir / REPORT_FILE
    write_text_atomic(path, "\n".join(part for part in body if part))
    return path
