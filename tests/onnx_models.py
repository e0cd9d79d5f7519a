"""Tiny model files for the ONNX tests: a registered family's tiny variant saved as model.pt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from histodetect.models import ModelSpec, build_model, tiny_model_kwargs
from histodetect.models.checkpoint import save_model


def save_tiny_model(
    path: Path, name: str = "seed_cnn", crop_px: int | None = None, **kwargs: Any
) -> Path:
    """Save the tiny variant of family `name` (seeded, untrained; builder `kwargs` over the
    tiny ones) with a non-trivial spec."""
    torch.manual_seed(0)
    spec = ModelSpec(
        name,
        {**tiny_model_kwargs(name), **kwargs},
        crop_px=crop_px,
        mean=(0.7, 0.55, 0.68),
        std=(0.24, 0.28, 0.22),
        threshold=0.4,
        temperature=1.7,
    )
    save_model(path, build_model(spec).eval(), spec, {"store_fingerprint": "test"})
    return path
