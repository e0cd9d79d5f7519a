"""The PyTorch backend: a loaded model on a device, at the precision and layout picked for it.

On a CPU at bf16 the model also runs as a frozen TorchScript graph in bf16 with oneDNN graph
fusion (fused conv + BN + ReLU kernels on AMX / AVX-512 BF16): 2.2x the eager autocast path on
the dev CPU, at the same quality (docs/BENCHMARKS.md; BatchNorm is folded into the convs in
fp32 before the cast). In fp32 on a CPU that takes channels_last
(`histodetect.hardware.use_channels_last`) it runs as the same kind of graph in fp32 (BN folded
into the convs): probabilities within 5e-5 of eager fp32, about 1.3x the eager channels_last
path on an AVX2 CPU. Models TorchScript cannot trace run eagerly (under autocast at bf16), as on GPUs.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from histodetect.errors import HistodetectError
from histodetect.hardware import autocast, resolve_precision, use_channels_last
from histodetect.inference.backends import N_TTA_VIEWS, d4_view_nhwc
from histodetect.models.pool_order import relu_before_pool
from histodetect.models.spec import ModelSpec, prepare_batch


def pick_device(name: str = "auto") -> torch.device:
    """The device to run on: "auto" takes CUDA when present, else the CPU.

    Raises:
        HistodetectError: CUDA asked for where there is none, or an unknown device name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HistodetectError(f"--device {name} asks for a CUDA GPU but none is available here; "
                               "use --device cpu or auto.")  # fmt: skip
    try:
        return torch.device(name)
    except RuntimeError:
        raise HistodetectError(
            f"--device {name!r} is not a device; use auto, cpu or cuda."
        ) from None


@torch.inference_mode()
def view_logits(
    model: nn.Module,
    spec: ModelSpec,
    pixels: np.ndarray,
    tta: bool,
    device: torch.device,
    precision: str = "auto",
) -> np.ndarray:
    """Raw logits of one batch: float32 (n,) without TTA, (n, 8) with the 8 dihedral views.

    Args:
        pixels: uint8 (n, H, W, 3) patches as the model was trained on.
        precision: `auto` (bf16 where the device computes it natively), `32-true` or
            `bf16-mixed`; see `histodetect.hardware`.
    """
    precision = resolve_precision(precision, device.type)
    layout = torch.channels_last if use_channels_last(device.type, precision) else None
    with autocast(device.type, precision):
        if not tta:
            return model(_input(pixels, spec, device, layout)).float().cpu().numpy()
        views = [model(x).float() for x in tta_inputs(pixels, spec, device, layout)]
    return torch.stack(views, dim=1).cpu().numpy()


def _input(
    pixels: np.ndarray, spec: ModelSpec, device: torch.device, layout: torch.memory_format | None
) -> torch.Tensor:
    x = prepare_batch(torch.from_numpy(np.ascontiguousarray(pixels)).to(device), spec)
    return x if layout is None else x.contiguous(memory_format=layout)


def tta_inputs(
    pixels: np.ndarray, spec: ModelSpec, device: torch.device, layout: torch.memory_format | None
) -> Iterator[torch.Tensor]:
    """Model inputs of the 8 dihedral views of uint8 patches: each view of the whole patch,
    then `prepare_batch`, as the ONNX graph (which crops inside) sees them. Flipping after a
    crop with an odd margin (96 - 33 px) moved its window by a pixel: TTA then gave other
    probabilities than the exported model's (up to 0.003). One view at a time: eight float
    copies of a 256-patch batch held together are 216 MB."""
    for k in range(N_TTA_VIEWS):
        yield _input(d4_view_nhwc(pixels, k), spec, device, layout)


def fused_cpu_graph(
    model: nn.Module, input_size_px: int, dtype: torch.dtype = torch.bfloat16
) -> torch.jit.ScriptModule | None:
    """A frozen TorchScript copy of `model` in `dtype` for CPU inference with oneDNN fusion.

    Takes channels_last (n, 3, s, s) images of `dtype`. Returns None when the model cannot be
    traced or the graph fails to run (the caller then runs it eagerly).
    """
    memory_format = torch.channels_last
    example = torch.zeros((2, 3, input_size_px, input_size_px), dtype=dtype)
    try:
        torch.jit.enable_onednn_fusion(True)  # a flag of TorchScript graphs only
        # A copy in the textbook conv-BN-ReLU-pool order: oneDNN's graph fuses conv + BN + ReLU
        # and cannot add a ReLU after a pool (histodetect.models.pool_order).
        # BatchNorm folded into the convs in fp32 first: folded by the freeze after the bf16
        # cast, the scale and shift were rounded three times, 4x the error (docs/BENCHMARKS.md).
        twin = relu_before_pool(fold_batchnorm(model)).eval().to(dtype)
        twin = twin.to(memory_format=memory_format)  # type: ignore[call-overload]
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and TorchScript notices, not for users
            example = example.contiguous(memory_format=memory_format)
            graph = torch.jit.freeze(torch.jit.trace(twin, example, check_trace=False))
            for _ in range(3):  # profiling runs, then fusion: fail here, not on user data
                graph(example)
            return graph
    except Exception:  # a model or CPU this path cannot serve; eager autocast still works
        return None


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every BatchNorm2d that directly follows a Conv2d in an
    nn.Sequential folded into that conv, in the model's own precision; other layers as they are."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for sequence in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        layers = list(sequence.children())
        names = [name for name, _ in sequence.named_children()]
        for i in range(len(layers) - 1):
            conv, bn = layers[i], layers[i + 1]
            # exact types: timm's BatchNormAct2d (a subclass) also applies its activation
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d:
                setattr(sequence, names[i], fuse_conv_bn_eval(conv, bn))
                setattr(sequence, names[i + 1], nn.Identity())
    return folded


class TorchBackend:
    """A PyTorch model moved to its device once, in eval mode and the layout its precision wants.

    Args:
        model: maps (n, 3, s, s) float images to (n,) logits.
        spec: its ModelSpec (the preprocessing `prepare_batch` applies).
        device: where to run.
        precision: `auto`, `32-true` or `bf16-mixed` (resolved here for the device).
    """

    def __init__(
        self, model: nn.Module, spec: ModelSpec, device: torch.device, precision: str = "auto"
    ) -> None:
        self.precision = resolve_precision(precision, device.type)
        self.device = device
        self.spec = spec
        self.model = model.to(device).eval()
        channels_last = use_channels_last(device.type, self.precision)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.fused = None
        self.fused_dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float32
        if device.type == "cpu" and channels_last:
            self.fused = fused_cpu_graph(self.model, spec.input_size_px, self.fused_dtype)
        self.device_name = str(device)
        fused = ", fused graph" if self.fused is not None else ""
        self.description = f"{device}, torch {self.precision}{fused}"

    def logits(self, pixels: np.ndarray, tta: bool) -> np.ndarray:
        """Raw logits, float32 (n,) or (n, 8) with TTA, of uint8 (n, S, S, 3) patches."""
        if self.fused is None or not len(pixels):
            return view_logits(self.model, self.spec, pixels, tta, self.device, self.precision)
        return self._fused_logits(pixels, tta)

    @torch.inference_mode()
    def _fused_logits(self, pixels: np.ndarray, tta: bool) -> np.ndarray:
        assert self.fused is not None
        cpu, layout = torch.device("cpu"), torch.channels_last
        if not tta:
            x = _input(pixels, self.spec, cpu, layout).to(self.fused_dtype)
            return self.fused(x).float().numpy()
        inputs = tta_inputs(pixels, self.spec, cpu, layout)
        views = [self.fused(x.to(self.fused_dtype)).float() for x in inputs]
        return torch.stack(views, dim=1).numpy()
