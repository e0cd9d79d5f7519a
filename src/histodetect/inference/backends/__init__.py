"""Inference backends: uint8 NHWC patches in, raw logits out, nothing else.

Two implement `InferenceBackend`: `torch.TorchBackend` (a PyTorch model.pt, checkpoint or run
folder, with the precision and memory layout picked per device) and `onnx.OnnxBackend` (an
exported model.onnx run by ONNX Runtime, whose graph holds the preprocessing; it imports no
torch). `histodetect.inference.predictor.Predictor` picks one from the model file; every
command reaches a backend only through it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from histodetect.errors import HistodetectError

DEVICES = ("auto", "cpu", "cuda")
"""Device names every backend accepts (`cuda:N` too): auto takes a GPU when one is usable."""
N_TTA_VIEWS = 8
"""Views of test-time augmentation: the 8 dihedral transforms (D4) of a patch."""


class InferenceBackend(Protocol):
    """Something that turns patches into raw logits.

    Attributes:
        device_name: the device it runs on, as torch names it ("cpu", "cuda", "cuda:1").
        description: where and how it runs, for messages (e.g. "cpu, torch bf16-mixed").
    """

    device_name: str
    description: str

    def logits(self, pixels: np.ndarray, tta: bool) -> np.ndarray:
        """Raw logits, float32 (n,) without TTA or (n, 8) with the 8 dihedral views.

        Args:
            pixels: uint8 (n, S, S, 3) RGB patches, S the model's patch size.
        """
        ...


def check_device_name(name: str) -> None:
    """Refuse a `--device` that no backend knows (before any model is loaded).

    Raises:
        HistodetectError: naming the valid choices.
    """
    if name not in DEVICES and not name.startswith("cuda:"):
        raise HistodetectError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}.")


def d4_view_nhwc(pixels: np.ndarray, k: int) -> np.ndarray:
    """Dihedral view `k` (0..7) of (n, H, W, C) patches, as `histodetect.augment.apply_d4`
    makes it of (n, C, H, W) images: flip the width if k >= 4, then rotate by (k % 4) x 90
    degrees counter-clockwise. For backends whose graph takes NHWC pixels."""
    if not 0 <= k < N_TTA_VIEWS:
        raise HistodetectError(f"D4 transform index must be in 0..7, got {k}.")
    view = pixels[:, :, ::-1] if k >= 4 else pixels
    return np.ascontiguousarray(np.rot90(view, k % 4, axes=(1, 2)))
