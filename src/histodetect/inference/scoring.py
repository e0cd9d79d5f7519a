"""Scoring uint8 patches with an in-memory PyTorch model: batched, optionally with D4 TTA.

For a model file (model.pt, run folder or model.onnx) use `histodetect.inference.predictor
.Predictor`, which picks the backend; these functions serve code that already holds an
`nn.Module` (evaluation, Grad-CAM, tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from histodetect.inference.backends import N_TTA_VIEWS
from histodetect.inference.backends.torch import TorchBackend, pick_device, view_logits
from histodetect.inference.logits import logits_to_probabilities, require_finite
from histodetect.models import ModelSpec

__all__ = [
    "N_TTA_VIEWS",
    "iter_logits",
    "logits_to_probabilities",
    "pick_device",
    "require_finite",
    "score_array",
    "view_logits",
]


def iter_logits(
    model: nn.Module,
    spec: ModelSpec,
    batches: Iterable[np.ndarray],
    *,
    tta: bool = False,
    device: torch.device | None = None,
    precision: str = "auto",
) -> Iterator[np.ndarray]:
    """Logits for each uint8 batch in turn (model moved to `device`, eval mode).

    Args:
        precision: `auto` (bf16 autocast + channels_last where the device computes bf16
            natively), `32-true` or `bf16-mixed`; see `histodetect.hardware`.
    """
    backend = TorchBackend(model, spec, device or pick_device(), precision)
    for pixels in batches:
        yield backend.logits(pixels, tta)


def score_array(
    model: nn.Module,
    spec: ModelSpec,
    pixels: np.ndarray,
    *,
    tta: bool = False,
    batch_size: int = 256,
    device: torch.device | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """Logits for all patches of an in-memory (or memory-mapped) uint8 (n, H, W, 3) array."""
    batches = (pixels[i : i + batch_size] for i in range(0, len(pixels), batch_size))
    parts = list(iter_logits(model, spec, batches, tta=tta, device=device, precision=precision))
    if not parts:
        return np.zeros((0, N_TTA_VIEWS) if tta else (0,), dtype=np.float32)
    return np.concatenate(parts)
