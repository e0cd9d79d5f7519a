"""`--precision auto` on a CPU without native bf16 runs a model.pt through an ONNX Runtime copy
where that measures faster: same probabilities, a cached graph and verdict, PyTorch kept for
Grad-CAM, and PyTorch whenever the copy cannot be made."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from histodetect.errors import HistodetectError
from histodetect.inference.backends import auto
from histodetect.inference.backends.torch import TorchBackend
from histodetect.inference.predictor import Predictor
from histodetect.models.checkpoint import load_checkpoint
from onnx_models import save_tiny_model

pytest.importorskip("onnxruntime")


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A CPU without native bf16, a fresh cache, the choice left to `auto`; the cache folder."""
    monkeypatch.setenv("HISTODETECT_CPU_BF16", "0")
    monkeypatch.delenv(auto.ENV_CPU_ONNXRUNTIME, raising=False)
    monkeypatch.setenv(auto.ENV_CACHE_DIR, str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save_tiny_model(tmp_path / "model.pt", "histocnn")


def _pixels(n: int = 24) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


def _torch_probabilities(model: Path, monkeypatch: pytest.MonkeyPatch, tta: bool) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setenv(auto.ENV_CPU_ONNXRUNTIME, "0")
        reference = Predictor(model, device="cpu", tta=tta)
        assert isinstance(reference.backend, TorchBackend)
        return reference.predict_pixels(_pixels())


def test_auto_measures_both_paths_takes_the_faster_and_caches_the_verdict(
    cpu: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = Predictor(model, device="cpu")
    (verdict_file,) = cpu.glob("*.json")
    verdict = json.loads(verdict_file.read_text())
    assert verdict["torch_img_s"] > 0 and verdict["onnxruntime_img_s"] > 0
    ort_wins = verdict["onnxruntime_img_s"] >= auto.MIN_SPEEDUP * verdict["torch_img_s"]
    assert verdict["faster"] == ("onnxruntime" if ort_wins else "torch")
    runs_ort = isinstance(predictor.backend, auto.OnnxCopyBackend)
    assert runs_ort == ort_wins, predictor.description
    assert ("onnxruntime" in predictor.description) == ort_wins
    assert list(cpu.glob("*.onnx")), "the graph is kept for the next open"
    # The next open reads the verdict: no export, no timing.
    monkeypatch.setattr(auto, "_export", lambda *a: pytest.fail("exported again"))
    monkeypatch.setattr(auto, "_measure", lambda *a: pytest.fail("measured again"))
    again = Predictor(model, device="cpu")
    assert type(again.backend) is type(predictor.backend)
    assert np.allclose(again.predict_pixels(_pixels()), predictor.predict_pixels(_pixels()))


@pytest.mark.parametrize("tta", [False, True])
def test_the_onnx_copy_gives_pytorchs_probabilities_and_keeps_the_model_for_gradcam(
    cpu: Path, model: Path, monkeypatch: pytest.MonkeyPatch, tta: bool
) -> None:
    expected = _torch_probabilities(model, monkeypatch, tta)
    monkeypatch.setenv(auto.ENV_CPU_ONNXRUNTIME, "1")
    predictor = Predictor(model, device="cpu", tta=tta)
    assert isinstance(predictor.backend, auto.OnnxCopyBackend), predictor.description
    assert predictor.backend.timings == {}, "forced: nothing measured"
    assert not list(cpu.glob("*.json"))
    got = predictor.predict_pixels(_pixels())
    assert np.abs(got - expected).max() <= 1e-4
    assert isinstance(predictor.model, torch.nn.Module), "Grad-CAM still has its network"
    assert predictor.spec.temperature == pytest.approx(1.7), "the model.pt's own spec"


def test_a_torch_verdict_keeps_pytorch_without_exporting(
    cpu: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = Predictor(model, device="cpu", precision="32-true")  # builds no copy
    assert isinstance(reference.backend, TorchBackend) and not cpu.exists()
    key = auto.cache_key(load_checkpoint(model), torch.get_num_threads())
    cpu.mkdir(parents=True)
    (cpu / f"{key}.json").write_text(json.dumps(
        {"faster": "torch", "torch_img_s": 2.0, "onnxruntime_img_s": 1.0}))  # fmt: skip
    monkeypatch.setattr(auto, "_export", lambda *a: pytest.fail("exported"))
    assert isinstance(Predictor(model, device="cpu").backend, TorchBackend)


def test_a_damaged_cached_graph_or_verdict_is_made_again(
    cpu: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Predictor(model, device="cpu")
    (graph,) = cpu.glob("*.onnx")
    (verdict_file,) = cpu.glob("*.json")
    graph.write_bytes(graph.read_bytes()[:1000])  # cut short
    verdict_file.write_text("{not json")
    predictor = Predictor(model, device="cpu")
    assert json.loads(verdict_file.read_text())["faster"] in ("torch", "onnxruntime")
    if isinstance(predictor.backend, TorchBackend):  # a verdict for torch need not open the graph
        monkeypatch.setenv(auto.ENV_CPU_ONNXRUNTIME, "1")
        predictor = Predictor(model, device="cpu")
    assert isinstance(predictor.backend, auto.OnnxCopyBackend)
    assert graph.stat().st_size > 1000, "exported again"
    expected = _torch_probabilities(model, monkeypatch, False)
    assert np.abs(predictor.predict_pixels(_pixels()) - expected).max() <= 1e-4


@pytest.mark.parametrize(
    "why", ["explicit fp32", "native bf16", "turned off", "extra missing", "cache unwritable"]
)
def test_pytorch_runs_where_the_copy_is_not_wanted_or_cannot_be_made(
    why: str, cpu: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    precision = "32-true" if why == "explicit fp32" else "auto"
    if why == "native bf16":
        monkeypatch.setenv("HISTODETECT_CPU_BF16", "1")
    if why == "turned off":
        monkeypatch.setenv(auto.ENV_CPU_ONNXRUNTIME, "0")
    if why == "extra missing":
        monkeypatch.setattr(auto, "_onnx_extra_installed", lambda: False)
    if why == "cache unwritable":
        blocker = tmp_path / "a_file"
        blocker.write_text("not a folder\n")
        monkeypatch.setenv(auto.ENV_CACHE_DIR, str(blocker))
    predictor = Predictor(model, device="cpu", precision=precision)
    assert isinstance(predictor.backend, TorchBackend), predictor.description
    assert np.isfinite(predictor.predict_pixels(_pixels(4))).all()


@pytest.mark.parametrize("why", ["extra missing", "cache unwritable"])
def test_forced_on_says_why_the_copy_cannot_be_made(
    why: str, cpu: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(auto.ENV_CPU_ONNXRUNTIME, "1")
    if why == "extra missing":
        monkeypatch.setattr(auto, "_onnx_extra_installed", lambda: False)
        says = r"HISTODETECT_CPU_ONNXRUNTIME=1 needs the onnx extra: pip install"
    else:
        blocker = tmp_path / "a_file"
        blocker.write_text("not a folder\n")
        monkeypatch.setenv(auto.ENV_CACHE_DIR, str(blocker))
        says = r"HISTODETECT_CPU_ONNXRUNTIME=1, but .*model\.pt cannot run in ONNX Runtime here"
    with pytest.raises(HistodetectError, match=says):
        Predictor(model, device="cpu")
