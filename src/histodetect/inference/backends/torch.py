"""The PyTorch backend: a loaded model on a device, at the precision and layout picked for it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from histodetect.augment import apply_d4
from histodetect.errors import HistodetectError
from histodetect.hardware import autocast, resolve_precision, use_channels_last
from histodetect.inference.backends import N_TTA_VIEWS
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
    x = prepare_batch(torch.from_numpy(np.ascontiguousarray(pixels)).to(device), spec)
    if use_channels_last(device.type, precision):
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device.type, precision):
        if not tta:
            return model(x).float().cpu().numpy()
        views = [model(apply_d4(x, k)).float() for k in range(N_TTA_VIEWS)]
    return torch.stack(views, dim=1).cpu().numpy()


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
        if use_channels_last(device.type, self.precision):
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.device_name = str(device)
        self.description = f"{device}, torch {self.precision}"

    def logits(self, pixels: np.ndarray, tta: bool) -> np.ndarray:
        """Raw logits, float32 (n,) or (n, 8) with TTA, of uint8 (n, S, S, 3) patches."""
        return view_logits(self.model, self.spec, pixels, tta, self.device, self.precision)
