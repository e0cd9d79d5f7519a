"""`histodetect evaluate model.onnx`: an export (int8 included) is scored by ONNX Runtime with
the same figures as the model.pt it came from, so a user can check what an export costs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from histodetect.cli.main import main
from histodetect.evaluation.evaluate import EvaluateOptions, evaluate
from imagefiles import make_synthetic_store
from onnx_models import save_tiny_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from histodetect.export import export_onnx


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx_eval")
    store = root / "store"
    make_synthetic_store(store, n=240, holdout=("valid", "test"))
    source = save_tiny_model(root / "model.pt", "histocnn")
    export_onnx(source, root / "model.onnx")
    return {"store": store, "pt": source, "onnx": root / "model.onnx"}


@pytest.mark.parametrize("tta", [False, True])
def test_evaluate_scores_an_export_like_its_model_pt(
    exported: dict[str, Path], tmp_path: Path, tta: bool
) -> None:
    opts = EvaluateOptions(split="test", tta=tta, n_boot=50, precision="32-true")
    from_pt = evaluate(exported["pt"], exported["store"], tmp_path / "pt", opts)
    opts = EvaluateOptions(split="test", tta=tta, n_boot=50)
    from_onnx = evaluate(exported["onnx"], exported["store"], tmp_path / "onnx", opts)
    assert 0 < from_onnx["auc"] < 1 and from_onnx["n"] == from_pt["n"] == 60
    for key in ("auc", "accuracy", "nll", "brier", "threshold", "temperature"):
        assert from_onnx[key] == pytest.approx(from_pt[key], abs=1e-5), key
    assert from_onnx["model"] == str(exported["onnx"])
    assert from_onnx["split_role"] == from_pt["split_role"]  # the export keeps its metadata
    saved = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    assert saved["auc"] == pytest.approx(from_onnx["auc"])
    # the report is whole; only the Grad-CAM galleries, which need gradients, are a note
    html = (tmp_path / "onnx" / "report.html").read_text()
    assert "runs in ONNX Runtime, which gives no gradients" in html
    assert "no gradients" not in (tmp_path / "pt" / "report.html").read_text()


def test_shift_robustness_of_an_export(exported: dict[str, Path], tmp_path: Path) -> None:
    opts = EvaluateOptions(split="test", n_boot=20, shifts=("stain", "jpeg"))
    metrics = evaluate(exported["onnx"], exported["store"], tmp_path / "r", opts)
    results = metrics["shifts"]["results"]
    assert sorted(results) == ["jpeg", "mean", "stain"]
    assert all(0 < row["auc"] < 1 for row in results.values())


def test_an_export_cannot_be_recalibrated_in_one_sentence(
    exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = exported["onnx"].read_bytes()
    argv = ["evaluate", str(exported["onnx"]), "--data", str(exported["store"]),
            "--split", "test", "--calibrate-on", "valid", "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "calibrate the model.pt it was exported from" in err and err.count("\n") == 1
    assert exported["onnx"].read_bytes() == before and not (tmp_path / "r").exists()
    argv = ["calibrate", str(exported["onnx"]), "--data", str(exported["store"])]
    assert main(argv) == 2
    assert "needs the model.pt it was exported from" in capsys.readouterr().err
