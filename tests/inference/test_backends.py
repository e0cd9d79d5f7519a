"""Inference backends behind the Predictor: ONNX Runtime without torch, D4 views, devices,
precision chosen per CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from histodetect import hardware
from histodetect.augment import apply_d4
from histodetect.errors import HistodetectError
from histodetect.inference.backends import check_device_name, d4_view_nhwc
from histodetect.inference.backends.onnx import providers_for
from histodetect.inference.backends.torch import TorchBackend, fused_cpu_graph
from histodetect.inference.predictor import Predictor
from histodetect.models import ModelSpec, build_model, model_names, tiny_model_kwargs
from onnx_models import save_tiny_model

ONNX_RUN = """
import sys
from pathlib import Path
import numpy as np
from histodetect.inference.backends.onnx import OnnxBackend
backend = OnnxBackend(Path(sys.argv[1]), "cpu")
pixels = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
logits = backend.logits(pixels, tta=True)
assert logits.shape == (3, 8) and np.isfinite(logits).all(), logits
print(sorted(m for m in ("torch", "lightning", "pytorch_lightning") if m in sys.modules))
"""


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxscript")
    from histodetect.export import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    source = save_tiny_model(folder / "model.pt", "seed_cnn", crop_px=32)
    return export_onnx(source, folder / "model.onnx").path


@pytest.mark.parametrize("k", range(8))
def test_nhwc_views_are_the_training_d4_views(k: int, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
    expected = apply_d4(torch.from_numpy(pixels).permute(0, 3, 1, 2), k).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(d4_view_nhwc(pixels, k), expected.numpy())


def test_onnx_backend_runs_without_importing_torch(tiny_onnx: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", ONNX_RUN, str(tiny_onnx)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_onnx_and_torch_agree_with_tta_and_a_centre_crop(
    tiny_onnx: Path, rng: np.random.Generator
) -> None:
    pixels = rng.integers(0, 256, (7, 96, 96, 3), dtype=np.uint8)
    onnx = Predictor(tiny_onnx, device="cpu", tta=True, batch_size=3)
    pt = Predictor(tiny_onnx.with_suffix(".pt"), device="cpu", tta=True, precision="32-true")
    np.testing.assert_allclose(onnx.logits(pixels), pt.logits(pixels), atol=1e-4)
    assert onnx.logits(pixels[:0]).shape == (0, 8)
    assert "onnxruntime" in onnx.description and onnx.device == torch.device("cpu")


def test_onnx_backend_refuses_wrong_pixels(tiny_onnx: Path) -> None:
    predictor = Predictor(tiny_onnx, device="cpu")
    with pytest.raises(HistodetectError, match="Expected 96x96 px patches"):
        predictor.logits(np.zeros((1, 64, 64, 3), dtype=np.uint8))
    with pytest.raises(HistodetectError, match="Expected uint8 patches"):
        predictor.logits(np.zeros((1, 96, 96, 3), dtype=np.float32))


def test_foreign_or_broken_onnx_files_are_one_sentence(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["pixels"], ["logits"])
    graph = helper.make_graph(
        [node],
        "foreign",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [None, 96, 96, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.UINT8, [None, 96, 96, 3])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "foreign.onnx")
    with pytest.raises(HistodetectError, match="without histodetect metadata"):
        Predictor(tmp_path / "foreign.onnx", device="cpu")
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(HistodetectError, match="cannot be loaded by ONNX Runtime"):
        Predictor(tmp_path / "broken.onnx", device="cpu")
    with pytest.raises(HistodetectError, match="does not exist"):
        Predictor(tmp_path / "absent.onnx", device="cpu")


def test_devices_are_checked_for_every_backend(tiny_onnx: Path) -> None:
    with pytest.raises(HistodetectError, match="unknown device 'tpu'"):
        check_device_name("tpu")
    assert providers_for("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert providers_for("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]
    assert providers_for("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == (
        "CUDAExecutionProvider"
    )
    with pytest.raises(HistodetectError, match="onnxruntime-gpu"):
        providers_for("cuda", ["CPUExecutionProvider"])
    with pytest.raises(HistodetectError, match="bf16-mixed applies to PyTorch models"):
        Predictor(tiny_onnx, precision="bf16-mixed")


@pytest.mark.parametrize(
    ("flag", "cpu_flags", "expected", "nhwc"),
    [
        ("1", {"avx512_bf16"}, "bf16-mixed", True),
        ("0", {"avx2", "fma"}, "32-true", True),  # fp32 NHWC measured faster with AVX2
        ("0", {"neon"}, "32-true", False),  # not measured: the default layout
    ],
)
def test_auto_precision_and_layout_follow_the_cpu(
    flag: str,
    cpu_flags: set[str],
    expected: str,
    nhwc: bool,
    tiny_onnx: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HISTODETECT_CPU_BF16", flag)
    monkeypatch.delenv(hardware.ENV_CPU_NHWC, raising=False)
    monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda: frozenset(cpu_flags))
    predictor = Predictor(tiny_onnx.with_suffix(".pt"), device="cpu")
    assert predictor.description.startswith(f"cpu, torch {expected}")
    assert predictor.description.endswith("fused graph") == nhwc
    first = next(m for m in predictor.model.modules() if isinstance(m, torch.nn.Conv2d))
    channels_last = first.weight.is_contiguous(memory_format=torch.channels_last)
    assert channels_last == nhwc
    # fp32 training: channels_last on AVX2 CPUs without AVX-512 (measured faster there), and
    # only for a model whose convolutions oneDNN's NHWC kernels train right
    histocnn = build_model(ModelSpec("histocnn", tiny_model_kwargs("histocnn")))
    train_nhwc = hardware.use_channels_last("cpu", expected, training=True, model=histocnn)
    assert train_nhwc == nhwc
    assert hardware.use_channels_last("cpu", expected, training=True) == (expected != "32-true")
    if expected == "32-true" and nhwc:  # not measured on AVX-512: the default layout
        monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda: frozenset({*cpu_flags, "avx512f"}))
        assert not hardware.use_channels_last("cpu", expected, training=True, model=histocnn)
        assert hardware.use_channels_last("cpu", expected)  # inference is measured faster there
        monkeypatch.setenv(hardware.ENV_CPU_NHWC, "1")
        assert hardware.use_channels_last("cpu", expected, training=True, model=histocnn)
        monkeypatch.delenv(hardware.ENV_CPU_NHWC)
        monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda: frozenset(cpu_flags))
    if expected == "32-true":  # the layout of fp32 inference can be forced either way
        monkeypatch.setenv(hardware.ENV_CPU_NHWC, "0" if nhwc else "1")
        assert hardware.use_channels_last("cpu", expected) != nhwc
    pixels = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    assert predictor.predict_pixels(pixels).shape == (2,)
    with pytest.raises(HistodetectError, match="--precision 'fp8' is not one of"):
        Predictor(tiny_onnx.with_suffix(".pt"), precision="fp8")


@pytest.mark.parametrize("name", model_names())
def test_cpu_bf16_runs_every_family_as_a_fused_graph(name: str, rng: np.random.Generator) -> None:
    if name == "timm":
        pytest.importorskip("timm")
    torch.manual_seed(0)
    spec = ModelSpec(name, tiny_model_kwargs(name), crop_px=64, mean=(0.6, 0.5, 0.6))
    model = build_model(spec).eval()
    fast = TorchBackend(model, spec, torch.device("cpu"), "bf16-mixed")
    assert fast.fused is not None and fast.description.endswith("fused graph")
    twin = build_model(spec).eval()
    twin.load_state_dict(model.state_dict())  # before the backend: a fused graph is a copy
    exact = TorchBackend(twin, spec, torch.device("cpu"), "32-true")
    for n in (1, 5):  # batch sizes other than the traced one
        pixels = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        got, expected = fast.logits(pixels, tta=True), exact.logits(pixels, tta=True)
        assert got.shape == (n, 8) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=0.1, rtol=0.05)  # bf16: 8-bit mantissa
    assert fast.logits(pixels[:0], tta=False).shape == (0,)


@pytest.mark.parametrize("name", model_names())
def test_cpu_fp32_fused_graph_gives_the_eager_values(
    name: str, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp32 on an AVX2 CPU runs a frozen channels_last graph (BN folded): same values as eager."""
    if name == "timm":
        pytest.importorskip("timm")
    torch.manual_seed(0)
    spec = ModelSpec(name, tiny_model_kwargs(name), crop_px=64, mean=(0.6, 0.5, 0.6))
    model = build_model(spec).eval()
    monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda: frozenset({"avx2"}))
    fast = TorchBackend(model, spec, torch.device("cpu"), "32-true")
    assert fast.fused is not None and fast.description == "cpu, torch 32-true, fused graph"
    monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda: frozenset())
    twin = build_model(spec).eval()
    twin.load_state_dict(model.state_dict())
    eager = TorchBackend(twin, spec, torch.device("cpu"), "32-true")
    assert eager.fused is None
    for n in (1, 5):  # batch sizes other than the traced one
        pixels = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        got, expected = fast.logits(pixels, tta=True), eager.logits(pixels, tta=True)
        assert got.shape == (n, 8) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_a_model_that_cannot_be_traced_runs_eagerly() -> None:
    class DictOut(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": x.mean(dim=(1, 2, 3))}

    assert fused_cpu_graph(DictOut(), 32) is None
    assert fused_cpu_graph(DictOut(), 32, torch.float32) is None


def _gradients(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(x).float().sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("histocnn", None),  # the default model at its real widths
        ("histocnn", "tiny"),
        ("seed_cnn", "tiny"),
        # a 1x1 stride-2 shortcut with 16 inputs: the fewest the layout rule allows on AVX-512
        ("histonet", {"stage_widths": (16, 32), "blocks_per_stage": (1, 1)}),
    ],
)
def test_channels_last_fp32_training_gives_the_default_layouts_gradients(
    name: str, kwargs: dict | str | None
) -> None:
    """On this machine's real oneDNN kernels: every model the layout rule lets train
    channels_last in fp32 gets the gradients the default layout gives (oneDNN's AVX2 weight
    gradient of strided 1x1 convs with 2-7 input channels was wrong by up to 4.7x on NHWC;
    on AVX-512, 2-15 input channels segfaulted)."""
    model_kwargs = tiny_model_kwargs(name) if kwargs == "tiny" else dict(kwargs or {})
    torch.manual_seed(0)
    model = build_model(ModelSpec(name, model_kwargs)).train()
    assert hardware.nhwc_fp32_training_is_safe(model)
    x = torch.randn(6, 3, 96, 96)
    torch.manual_seed(1)  # the same dropout masks for both layouts
    expected = _gradients(model, x)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    torch.manual_seed(1)
    got = _gradients(model, x.contiguous(memory_format=torch.channels_last))
    assert got.keys() == expected.keys()
    for key, grad in expected.items():  # fp32 rounding differs by layout, and a ReLU input
        # within rounding of 0 can gate the other way (up to 4e-3 of the largest gradient seen)
        scale = grad.abs().max().clamp_min(1e-6)
        assert ((got[key] - grad).abs().max() / scale).item() < 2e-2, key
