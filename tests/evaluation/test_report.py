"""The evaluation report: figures, the self-contained report.html and the error galleries."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from histodetect.atomic import is_temp_name
from histodetect.evaluation.report import ReportInputs, most_confident_errors, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WARNING_PLAIN = "The split is not slide-disjoint: 3 slides appear in train and test."
WARNING_SCRIPT = "origin <script>alert('x')</script> & more"


def make_inputs(
    n: int = 200, seed: int = 0, curves: bool = True, separate: float = 1.5
) -> ReportInputs:
    """Random patches: half tumour, probabilities = sigmoid of label-dependent normal noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], [n - n // 2, n // 2])
    logits = rng.normal(np.where(labels == 1, separate, -separate), 1.0)
    probs = 1.0 / (1.0 + np.exp(-logits))
    pixels = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
    ids = np.array([hashlib.sha1(p.tobytes()).hexdigest() for p in pixels])
    origins = np.array([f"data/slide_{i % 7}.h5#{i}" for i in range(n)])
    pred = probs >= 0.5
    tn, fp = int(np.sum(~pred & (labels == 0))), int(np.sum(pred & (labels == 0)))
    fn, tp = int(np.sum(~pred & (labels == 1))), int(np.sum(pred & (labels == 1)))
    metrics = {
        "n": n, "n_positive": int(labels.sum()), "threshold": 0.5, "temperature": 1.234,
        "tta": True, "accuracy": (tn + tp) / n, "balanced_accuracy": 0.81, "auc": 0.912345,
        "auc_ci95": [0.88, 0.94], "sensitivity": tp / max(tp + fn, 1),
        "specificity": tn / max(tn + fp, 1), "precision": 0.8, "f1": 0.8, "nll": 0.4,
        "ece": 0.031, "brier": 0.12, "confusion_matrix": [[tn, fp], [fn, tp]],
        "classification_report_text": "              precision    recall  f1-score   support\n",
        "split": "test", "split_role": "held-out test", "model": "runs/x/best.ckpt",
        "model_name": "resnet18", "store": "stores/pcam", "threshold_method": "youden",
        "per_slide": [
            {"slide": f"slide_{s}", "n": 10, "n_positive": 5, "accuracy": a, "auc": None,
             "mean_probability": 0.5}
            for s, a in enumerate(np.linspace(0.5, 1.0, 60))
        ],
        "warnings": [WARNING_PLAIN, WARNING_SCRIPT],
    }  # fmt: skip
    training = {
        "train_loss": [(e, 0.7 / (e + 1)) for e in range(5)],
        "val_loss": [(e, 0.8 / (e + 1)) for e in range(5)],
        "val_auc": [(e, 0.8 + 0.02 * e) for e in range(5)],
        "train_acc": [(e, 0.7 + 0.03 * e) for e in range(5)],
        "lr-AdamW": [(e, 1e-3 * 0.5**e) for e in range(5)],
    }
    return ReportInputs(
        metrics=metrics,
        labels=labels,
        probabilities=probs,
        ids=ids,
        origins=origins,
        read_pixels=lambda idx: pixels[np.asarray(idx)],
        training_curves=training if curves else {},
    )


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report") / "eval"
    path = write_report(out, make_inputs(), gallery_size=8)
    return path, path.read_text(encoding="utf-8")


def test_report_is_written_and_self_contained(full_report: tuple[Path, str]) -> None:
    path, html = full_report
    assert path == path.parent / "report.html" and path.is_file()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert html.count("data:image/png;base64,") >= 6


def test_report_shows_metrics_and_escapes_warnings(full_report: tuple[Path, str]) -> None:
    _, html = full_report
    assert "0.9123" in html  # the AUC, 4 decimals
    assert "0.8800" in html and "0.9400" in html  # its CI
    assert "resnet18" in html and "held-out test" in html
    assert WARNING_PLAIN in html
    assert "origin &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in html
    assert html.index(WARNING_PLAIN) < html.index("Headline")


def test_per_slide_table_worst_first_top_50(full_report: tuple[Path, str]) -> None:
    _, html = full_report
    assert "50 of 60 slides" in html
    assert "<td>slide_0</td>" in html and "<td>slide_59</td>" not in html
    assert html.index("<td>slide_0</td>") < html.index("<td>slide_1</td>")


def test_every_figure_is_a_png_and_no_tmp_left(full_report: tuple[Path, str]) -> None:
    out = full_report[0].parent
    names = {p.name for p in out.glob("*.png")}
    expected = {"roc.png", "pr.png", "reliability.png", "confusion.png", "training_curves.png",
                "false_positives.png", "false_negatives.png"}  # fmt: skip
    assert names == expected
    for name in names:
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE), name
    assert not [p.name for p in out.iterdir() if is_temp_name(p.name) or p.name.endswith(".tmp")]


def test_a_figure_that_fails_to_save_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from histodetect.evaluation import plots

    def dies_half_way(path: Path, **_: object) -> None:  # a full disk, say
        Path(path).write_bytes(PNG_SIGNATURE)
        raise OSError("No space left on device")

    fig = plots._pyplot().figure()
    monkeypatch.setattr(fig, "savefig", dies_half_way)
    with pytest.raises(OSError, match="No space"):
        plots._save(fig, tmp_path / "roc.png")
    assert list(tmp_path.iterdir()) == []


def test_most_confident_errors_on_hand_made_example() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0])
    probs = np.array([0.9, 0.2, 0.6, 0.99, 0.1, 0.8, 0.45, 0.5, 0.5])
    fp, fn = most_confident_errors(labels, probs, threshold=0.5, k=2)
    assert fp.tolist() == [3, 0]  # 0.99, 0.9; not 0.6 (k=2), not 0.2 (below threshold)
    assert fn.tolist() == [4, 6]  # 0.1, 0.45; 0.5 is at the threshold, so called tumour
    fp_all, fn_all = most_confident_errors(labels, probs, threshold=0.5, k=10)
    assert fp_all.tolist() == [3, 0, 2, 8]
    assert fn_all.tolist() == [4, 6]


def test_no_curves_and_no_false_negatives(tmp_path: Path) -> None:
    inputs = make_inputs(n=24, seed=1, curves=False, separate=8.0)
    probs = inputs.probabilities.copy()
    probs[inputs.labels == 1] = 0.97  # every tumour patch found
    probs[np.flatnonzero(inputs.labels == 0)[:2]] = 0.9  # two false positives
    inputs = dataclasses.replace(inputs, probabilities=probs)
    html = write_report(tmp_path, inputs, gallery_size=4).read_text(encoding="utf-8")
    assert not (tmp_path / "training_curves.png").exists()
    assert not (tmp_path / "false_negatives.png").exists()
    assert (tmp_path / "false_positives.png").is_file()
    assert "No false negatives at this threshold." in html
    assert "Training curves" not in html
    assert not [
        p.name for p in tmp_path.iterdir() if is_temp_name(p.name) or p.name.endswith(".tmp")
    ]


def test_error_galleries_gain_gradcam_overlays(tmp_path: Path) -> None:
    seen: list[int] = []

    def explain(pixels: np.ndarray) -> list[np.ndarray]:
        seen.append(len(pixels))
        return [255 - p for p in pixels]  # any RGB image per patch

    inputs = dataclasses.replace(make_inputs(n=40, seed=2), explain_pixels=explain)
    html = write_report(tmp_path / "with", inputs, gallery_size=4).read_text(encoding="utf-8")
    assert seen and all(0 < n <= 4 for n in seen)
    assert (tmp_path / "with" / "false_positives_gradcam.png").is_file()
    assert "Grad-CAM of the false positives" in html


def test_missing_gradcam_dependency_is_a_note_not_a_failure(tmp_path: Path) -> None:
    from histodetect.errors import HistodetectError

    def explain(pixels: np.ndarray) -> list[np.ndarray]:
        raise HistodetectError("Grad-CAM needs captum: pip install 'histodetect[explain]'.")

    inputs = dataclasses.replace(make_inputs(n=40, seed=2), explain_pixels=explain)
    html = write_report(tmp_path, inputs, gallery_size=4).read_text(encoding="utf-8")
    assert "No Grad-CAM overlays: Grad-CAM needs captum" in html
    assert not list(tmp_path.glob("*_gradcam.png"))
