"""`--precision auto` on a CPU without native bf16 runs a model.pt through an ONNX Runtime copy
where that measures faster: same probabilities, a cached graph and verdict, PyTorch kept for
Grad-CAM, and PyTorch whenever the copy cannot be made."""

from __future__ import annotations

import json
import os
import time
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
    monkeypatch.setattr(auto, "PROBE_MIN_S", 0.02)  # the tiny models need no steadier timing
    # Whatever else runs beside the tests, the verdict is cached (a busy CPU: its own test).
    monkeypatch.setattr(auto, "busy_cpu_seconds", lambda: None)
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


class _Timed:
    """A backend whose every call takes `seconds`; counts its calls."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls = seconds, 0

    def logits(self, pixels: np.ndarray, tta: bool) -> np.ndarray:
        time.sleep(self.seconds)
        self.calls += 1
        return np.zeros(len(pixels), np.float32)


def test_the_probe_times_blocks_long_enough_to_measure_a_fast_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auto, "PROBE_MIN_S", 0.1)
    fast, slow = _Timed(0.004), _Timed(0.012)
    verdict = auto._measure(fast, slow, 32)  # type: ignore[arg-type]
    # 1 warm-up call, then at least PROBE_MIN_S per block: far more than one call per block.
    assert fast.calls >= 1 + auto.PROBE_ROUNDS * 0.1 / 0.004 * 0.5
    assert slow.calls >= 1 + auto.PROBE_ROUNDS * 0.1 / 0.012 * 0.5
    assert verdict["torch_img_s"] == pytest.approx(auto.PROBE_PATCHES / 0.004, rel=0.4)
    assert verdict["onnxruntime_img_s"] == pytest.approx(auto.PROBE_PATCHES / 0.012, rel=0.4)
    assert verdict["faster"] == "torch"
    swapped = auto._measure(slow, fast, 32)  # type: ignore[arg-type]
    assert swapped["faster"] == "onnxruntime"


def test_a_verdict_measured_on_a_busy_cpu_is_used_but_not_cached(
    cpu: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readings = iter(range(0, 10**9, 1000))  # 1000 busy CPU seconds between any two readings
    monkeypatch.setattr(auto, "busy_cpu_seconds", lambda: float(next(readings)))
    measured: list[dict[str, object]] = []
    real_measure = auto._measure
    monkeypatch.setattr(
        auto, "_measure", lambda *a: measured.append(real_measure(*a)) or measured[-1]
    )
    first = Predictor(model, device="cpu")
    assert measured[0]["busy"] is True and measured[0]["other_cores"] > auto.BUSY_CORES
    # The verdict still decides this run.
    ort_chosen = isinstance(first.backend, auto.OnnxCopyBackend)
    assert ort_chosen == (measured[0]["faster"] == "onnxruntime"), first.description
    assert not list(cpu.glob("*.json")), "a busy moment must not decide for good"
    assert list(cpu.glob("*.onnx")), "the graph is kept: only the timing is redone"
    assert np.isfinite(first.predict_pixels(_pixels(4))).all()
    monkeypatch.setattr(auto, "busy_cpu_seconds", lambda: 5.0)  # now idle: no CPU used by others
    Predictor(model, device="cpu")
    assert len(measured) == 2 and measured[1]["busy"] is False and measured[1]["other_cores"] == 0
    (verdict_file,) = cpu.glob("*.json")
    assert json.loads(verdict_file.read_text())["faster"] == measured[1]["faster"]


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


def test_only_load_on_the_cores_the_probe_needs_counts_as_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auto, "usable_cores", lambda: 2)
    assert not auto.contested(None, 2), "unknown (no /proc): cached as before"
    assert not auto.contested(0.4, 2) and auto.contested(0.6, 2)
    assert not auto.contested(1.4, 1), "one of two cores was free for others"
    assert auto.contested(1.6, 1)
    monkeypatch.setattr(auto, "usable_cores", lambda: 64)
    assert not auto.contested(30.0, 2), "a big server's other jobs leave the probe's cores alone"
    assert auto.contested(62.6, 2)


def test_busy_cpu_seconds_reads_busy_fields_and_not_idle(tmp_path: Path) -> None:
    from histodetect.hardware import busy_cpu_seconds

    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 20 30 5000 700 4 6 40 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    ticks = os.sysconf("SC_CLK_TCK")
    assert busy_cpu_seconds(stat) == pytest.approx((100 + 20 + 30 + 4 + 6 + 40) / ticks)
    assert busy_cpu_seconds(tmp_path / "missing") is None
    stat.write_text("intr 1 2 3\n")
    assert busy_cpu_seconds(stat) is None


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads /proc/stat (Linux)")
def test_busy_cpu_seconds_counts_this_processs_own_work() -> None:
    from histodetect.hardware import busy_cpu_seconds

    before, own_before = busy_cpu_seconds(), time.process_time()
    while time.process_time() - own_before < 0.5:  # spin half a CPU second
        pass
    after, own = busy_cpu_seconds(), time.process_time() - own_before
    assert before is not None and after is not None
    assert after - before >= own * 0.8, "the whole machine's busy time includes this process's"
