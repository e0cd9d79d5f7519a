"""An exported model.onnx runs in `predict`, `slide` and `serve` where torch cannot be imported.

Issue 10 asks that a deployment of an exported model need neither torch nor Lightning. The
commands run in a child process whose import system refuses torch, Lightning, torchmetrics
and captum (and scikit-learn and h5py, which a deployment need not have either), so any
import of them on these paths fails the test.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from histodetect.inference.predictor import Predictor
from imagefiles import save_image
from onnx_models import save_tiny_model
from real_patches import valid_patches
from serve_process import wait_for_url
from slidefiles import write_pyramid

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from histodetect.export import export_onnx

BLOCKER = """\
import importlib.abc, sys
BLOCKED = {"torch", "lightning", "torchmetrics", "captum", "torchvision", "sklearn", "h5py"}
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed here (blocked by the test)")
sys.meta_path.insert(0, NoTorch())
from histodetect.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def deployment(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model.onnx, real patch files, a small slide and the import-blocking launcher."""
    root = tmp_path_factory.mktemp("no_torch")
    source = save_tiny_model(root / "model.pt", "histocnn")
    onnx_path = export_onnx(source, root / "model.onnx").path
    pixels, _ = valid_patches(shared_data, per_class=4)
    patches = root / "patches"
    patches.mkdir()
    for index, patch in enumerate(pixels):
        save_image(patches / f"p{index}.png", patch)
    level0 = np.full((96 * 4, 96 * 4, 3), 240, dtype=np.uint8)
    for index, patch in enumerate(pixels[:4]):
        row, col = divmod(index, 2)
        level0[96 + row * 96 : 192 + row * 96, 96 + col * 96 : 192 + col * 96] = patch
    slide = write_pyramid(root / "slide.tif", level0, mpp=0.972, n_levels=2)
    launcher = root / "no_torch.py"
    launcher.write_text(BLOCKER)
    return {"onnx": onnx_path, "patches": patches, "slide": slide, "launcher": launcher}


def _run(deployment: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(deployment["launcher"]), *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _expected(deployment: dict[str, Path]) -> dict[str, float]:
    predictor = Predictor(deployment["onnx"], device="cpu")
    rows = predictor.predict_paths(sorted(deployment["patches"].glob("*.png")))
    return {row.id: float(row.probability) for row in rows if row.probability is not None}


def test_predict_runs_an_onnx_model_without_torch(
    deployment: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "predictions.csv"
    done = _run(deployment, "predict", str(deployment["patches"]), "--model",
                str(deployment["onnx"]), "--out", str(out), "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stderr
    with out.open() as file:
        got = {row["id"]: float(row["label"]) for row in csv.DictReader(file)}
    expected = _expected(deployment)
    assert set(got) == set(expected) and len(got) == 8
    assert max(abs(got[key] - expected[key]) for key in got) < 1e-5


def test_slide_runs_an_onnx_model_without_torch(
    deployment: dict[str, Path], tmp_path: Path
) -> None:
    done = _run(deployment, "slide", str(deployment["slide"]), "--model",
                str(deployment["onnx"]), "--out", str(tmp_path / "out"), "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "slide" / "summary.json").read_text())
    assert summary["model"]["device"] == "cpu"
    assert (tmp_path / "out" / "slide" / "heatmap.png").is_file()


def test_serve_runs_an_onnx_model_without_torch(
    deployment: dict[str, Path], tmp_path: Path
) -> None:
    httpx = pytest.importorskip("httpx", reason="needs the serve extra")
    pytest.importorskip("fastapi", reason="needs the serve extra")
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(deployment["launcher"]), "serve", "--port", "0", "--model",
         str(deployment["onnx"])],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    try:
        url = wait_for_url(process, tmp_path / "serve.log", timeout_s=120)
        patch = sorted(deployment["patches"].glob("*.png"))[0]
        with httpx.Client(base_url=url, timeout=60) as client:
            with patch.open("rb") as file:
                answer = client.post("/v1/predict", files={"files": (patch.name, file)})
            assert answer.status_code == 200, answer.text
            probability = answer.json()["predictions"][0]["probability"]
            assert abs(probability - _expected(deployment)[patch.stem]) < 1e-5
            assert client.get("/v1/model").status_code == 200
            with patch.open("rb") as file:
                explained = client.post("/v1/explain", files={"file": (patch.name, file)})
            assert explained.status_code == 501  # Grad-CAM needs the model.pt, said in a sentence
            assert "model.pt" in explained.json()["error"]
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
        log.close()
    assert "is not installed here" not in (tmp_path / "serve.log").read_text()
