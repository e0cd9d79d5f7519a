"""The one preprocessing path a ModelSpec defines, and building a model from a spec."""

from __future__ import annotations

import functools

import torch
from torch import nn

from histodetect.errors import HistodetectError
from histodetect.models.registry import create_model
from histodetect.modelspec import PCAM_MPP, ModelSpec

__all__ = [
    "PCAM_MPP",
    "ModelSpec",
    "build_model",
    "logits_to_probability",
    "normalise",
    "pixels_to_float",
    "prepare_batch",
]


def build_model(spec: ModelSpec) -> nn.Module:
    """Build a fresh (untrained) model for a spec; load the checkpoint's weights into it."""
    return create_model(spec.model_name, input_size_px=spec.input_size_px, **spec.model_kwargs)


def pixels_to_float(pixels: torch.Tensor) -> torch.Tensor:
    """Turn uint8 (N, H, W, 3) pixels into float32 (N, 3, H, W) values in [0, 1].

    Stays on the input's device. The result is a channels_last-strided tensor (a permuted
    view of NHWC memory), which channels_last models read without a copy; values are the
    same whatever the memory format.
    """
    return pixels.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)


def normalise(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Centre-crop float (N, 3, H, W) images to ``spec.crop_px`` if set, then (x - mean) / std.

    Raises:
        HistodetectError: If ``x`` is not (N, 3, H, W) floating point or is smaller than the crop.
    """
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise HistodetectError(f"Expected float images of shape (N, 3, H, W), got {_describe(x)}.")
    if spec.crop_px is not None:
        height_px, width_px = x.shape[2], x.shape[3]
        if min(height_px, width_px) < spec.crop_px:
            raise HistodetectError(
                f"Images of {height_px}x{width_px} px are smaller than the {spec.crop_px} px crop."
            )
        top_px = (height_px - spec.crop_px) // 2
        left_px = (width_px - spec.crop_px) // 2
        x = x[:, :, top_px : top_px + spec.crop_px, left_px : left_px + spec.crop_px]
    mean = _channel_constant(spec.mean, x.device, x.dtype)
    std = _channel_constant(spec.std, x.device, x.dtype)
    return (x - mean) / std


@functools.lru_cache(maxsize=32)
def _channel_constant(
    values: tuple[float, float, float], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(1, 3, 1, 1) tensor of per-channel values, cached so repeat calls copy nothing to GPU."""
    return torch.tensor(values, dtype=dtype, device=device).reshape(1, 3, 1, 1)


def prepare_batch(pixels: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """THE preprocessing for evaluate, predict and serve: uint8 patches → model input.

    Args:
        pixels: uint8 tensor (N, H, W, 3), H = W = ``spec.patch_size_px``, on any device.
        spec: The model's spec (crop, mean, std).

    Returns:
        float32 (N, 3, S, S) with S = ``spec.input_size_px``, on the input's device.

    Raises:
        HistodetectError: If the dtype, layout or patch size does not match the spec.
    """
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[3] != 3:
        raise HistodetectError(
            f"Expected uint8 patches of shape (N, H, W, 3), got {_describe(pixels)}."
        )
    size_px = spec.patch_size_px
    if pixels.shape[1] != size_px or pixels.shape[2] != size_px:
        raise HistodetectError(
            f"Expected {size_px}x{size_px} px patches as the model was trained on, "
            f"got {pixels.shape[1]}x{pixels.shape[2]}."
        )
    crop_px = spec.crop_px
    if crop_px is not None and crop_px < size_px:
        # Crop the uint8 pixels first: the same values as cropping after the conversion
        # (`normalise` then finds nothing left to crop), without converting the outer ring,
        # which at the write-up's 32 px crop is 8/9 of every patch.
        top_px = (size_px - crop_px) // 2
        pixels = pixels[:, top_px : top_px + crop_px, top_px : top_px + crop_px]
    return normalise(pixels_to_float(pixels), spec)


def logits_to_probability(logits: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Return calibrated tumour probabilities sigmoid(logits / temperature), as float32."""
    return torch.sigmoid(logits.to(torch.float32) / spec.temperature)


def _describe(x: torch.Tensor) -> str:
    return f"{str(x.dtype).removeprefix('torch.')} of shape {tuple(x.shape)}"
