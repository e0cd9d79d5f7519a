"""ModelSpec, which travels inside every checkpoint (and in an exported model.onnx's metadata).

Imports no torch, so that a deployment running an exported model.onnx with ONNX Runtime needs
neither torch nor Lightning; the preprocessing it defines lives in `histodetect.models.spec`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from histodetect.errors import HistodetectError, reject_unknown_fields


def _as_float_triple(name: str, values: Any) -> tuple[float, float, float]:
    try:
        triple = tuple(float(value) for value in values)
    except (TypeError, ValueError):
        raise HistodetectError(f"ModelSpec.{name} must be three numbers.") from None
    if len(triple) != 3 or not all(math.isfinite(value) for value in triple):
        raise HistodetectError(f"ModelSpec.{name} must be three finite numbers, got {values!r}.")
    return (triple[0], triple[1], triple[2])


def _canonical_kwargs(model_kwargs: Any) -> dict[str, Any]:
    """Return model_kwargs as they come back from JSON (tuples become lists), or raise."""
    if not isinstance(model_kwargs, dict) or not all(isinstance(k, str) for k in model_kwargs):
        raise HistodetectError("ModelSpec.model_kwargs must be a dict with string keys.")
    if "input_size_px" in model_kwargs:
        raise HistodetectError(
            "ModelSpec.model_kwargs must not set input_size_px; set patch_size_px/crop_px."
        )
    try:
        canonical: dict[str, Any] = json.loads(json.dumps(model_kwargs, allow_nan=False))
    except (TypeError, ValueError):
        raise HistodetectError("ModelSpec.model_kwargs must be JSON-serialisable.") from None
    return canonical


PCAM_MPP = 0.972
"""Microns per pixel of PCam / Kaggle patches (Camelyon16 level 2: 4 x 0.243 um/px)."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and feed it pixels exactly as in training.

    Attributes:
        model_name: Registry name, see `histodetect.models.list_models`.
        model_kwargs: Builder keyword arguments except ``input_size_px`` (JSON values only;
            tuples are stored as lists).
        patch_size_px: Side of the square uint8 patches the model was trained on.
        crop_px: Side of the centre crop fed to the model; None feeds the full patch.
        mean: Per-channel (R, G, B) mean subtracted after scaling pixels to [0, 1].
        std: Per-channel (R, G, B) divisor applied after subtracting ``mean``; each > 0.
        threshold: Decision threshold on the calibrated tumour probability, in [0, 1].
        temperature: Logits are divided by this (> 0) before the sigmoid (calibration).
        class_names: Names of label 0 and label 1.
        mpp: Microns per pixel of the patches the model was trained on (PCam and Kaggle:
            Camelyon16 level 2, 4 x 0.243 = 0.972 um/px); whole-slide inference reads slides
            at this resolution.
    """

    model_name: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    patch_size_px: int = 96
    crop_px: int | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    threshold: float = 0.5
    temperature: float = 1.0
    class_names: tuple[str, str] = ("normal", "tumour")
    mpp: float = PCAM_MPP

    def __post_init__(self) -> None:
        """Validate every field and normalise containers to canonical, immutable forms."""
        if not isinstance(self.model_name, str) or not self.model_name:
            raise HistodetectError("ModelSpec.model_name must be a non-empty string.")
        object.__setattr__(self, "model_kwargs", _canonical_kwargs(self.model_kwargs))
        if not _is_int(self.patch_size_px) or self.patch_size_px < 1:
            raise HistodetectError("ModelSpec.patch_size_px must be a positive integer.")
        if self.crop_px is not None and (
            not _is_int(self.crop_px) or not 1 <= self.crop_px <= self.patch_size_px
        ):
            raise HistodetectError(
                f"ModelSpec.crop_px must be None or an integer in 1..{self.patch_size_px}."
            )
        object.__setattr__(self, "mean", _as_float_triple("mean", self.mean))
        object.__setattr__(self, "std", _as_float_triple("std", self.std))
        if min(self.std) <= 0:
            raise HistodetectError("ModelSpec.std values must all be positive.")
        _check_number("threshold", self.threshold, low=0.0, high=1.0)
        _check_number("temperature", self.temperature, low=0.0, high=math.inf)
        if self.temperature <= 0:
            raise HistodetectError("ModelSpec.temperature must be positive.")
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "temperature", float(self.temperature))
        names = tuple(self.class_names)
        if len(names) != 2 or not all(isinstance(name, str) for name in names):
            raise HistodetectError("ModelSpec.class_names must be two strings.")
        object.__setattr__(self, "class_names", names)
        _check_number("mpp", self.mpp, low=0.01, high=100.0)
        object.__setattr__(self, "mpp", float(self.mpp))

    @property
    def input_size_px(self) -> int:
        """Side of the square image the model sees: the crop if set, else the full patch."""
        return self.crop_px if self.crop_px is not None else self.patch_size_px

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (tuples become lists) that `from_dict` accepts."""
        return {
            "model_name": self.model_name,
            "model_kwargs": json.loads(json.dumps(self.model_kwargs)),
            "patch_size_px": self.patch_size_px,
            "crop_px": self.crop_px,
            "mean": list(self.mean),
            "std": list(self.std),
            "threshold": self.threshold,
            "temperature": self.temperature,
            "class_names": list(self.class_names),
            "mpp": self.mpp,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Rebuild a spec from `to_dict` output (e.g. read from a checkpoint or JSON).

        Raises:
            HistodetectError: If a key is unknown, ``model_name`` is missing, or a value is
                invalid.
        """
        if not isinstance(data, dict):
            raise HistodetectError("A model spec must be a JSON object (dict).")
        reject_unknown_fields(cls, data, "model spec keys")
        if "model_name" not in data:
            raise HistodetectError("A model spec needs a model_name.")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelSpec:
        """Return a copy with some fields changed (validated like a new spec)."""
        return self.from_dict({**self.to_dict(), **changes})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_number(name: str, value: Any, *, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise HistodetectError(f"ModelSpec.{name} must be a number.")
    if not low <= value <= high:
        raise HistodetectError(f"ModelSpec.{name} must lie in [{low}, {high}], got {value}.")
