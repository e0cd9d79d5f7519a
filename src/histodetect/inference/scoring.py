"""Scoring uint8 patches with a loaded model: batched, on the best device, optionally with D4 TTA."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from histodetect.augment import apply_d4
from histodetect.errors import HistodetectError
from histodetect.hardware import autocast, resolve_precision, use_channels_last
from histodetect.models import ModelSpec, prepare_batch

N_TTA_VIEWS = 8


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


def logits_to_probabilities(logits: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Calibrated tumour probability: sigmoid(logit / temperature), averaged over TTA views.

    The one numpy form of the calibrated probability (`histodetect.evaluation.calibration`
    `.probabilities` with the spec's temperature).

    Args:
        logits: (n,) or (n, views).
    """
    from histodetect.evaluation.calibration import probabilities

    return probabilities(logits, spec.temperature)


def require_finite(logits: np.ndarray, model_path: object) -> np.ndarray:
    """Return `logits`, or raise when any is NaN/inf: a broken model never yields a score.

    Raises:
        HistodetectError: naming the model file and how many patches were affected.
    """
    bad = ~np.isfinite(logits)
    if bad.any():
        n_bad = int(bad.reshape(len(logits), -1).any(axis=1).sum())
        raise HistodetectError(
            f"model {model_path} gave non-finite outputs (NaN or inf) for {n_bad} of "
            f"{len(logits)} patches; its weights are broken (a diverged run?): retrain it."
        )
    return logits


def iter_logits(
    model: nn.Module,
    spec: ModelSpec,
    batches: Iterable[np.ndarray],
    *,
    tta: bool = False,
    device: torch.device | None = None,
    precision: str = "auto",
) -> Iterator[np.ndarray]:
    """Logits for each uint8 batch in turn (model moved to `device`, eval mode)."""
    device = device or pick_device()
    model.to(device).eval()
    if use_channels_last(device.type, resolve_precision(precision, device.type)):
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    for pixels in batches:
        yield view_logits(model, spec, pixels, tta, device, precision)


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
