"""Tests for ModelSpec and the one preprocessing path (prepare_batch)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from histodetect.errors import HistodetectError
from histodetect.models import (
    ModelSpec,
    build_model,
    count_parameters,
    create_model,
    logits_to_probability,
    normalise,
    pixels_to_float,
    prepare_batch,
)


def _spec(**changes: object) -> ModelSpec:
    fields: dict[str, object] = {
        "model_name": "seed_cnn",
        "model_kwargs": {"conv_channels": (4, 8, 8), "dense_units": 8},
        "crop_px": 32,
        "mean": (0.7, 0.5, 0.6),
        "std": (0.2, 0.25, 0.1),
        "threshold": 0.3,
        "temperature": 1.5,
    }
    fields.update(changes)
    return ModelSpec(**fields)  # type: ignore[arg-type]


def test_json_round_trip() -> None:
    spec = _spec()
    restored = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert restored == spec
    assert restored.model_kwargs == {"conv_channels": [4, 8, 8], "dense_units": 8}
    assert restored.input_size_px == 32
    assert ModelSpec("seed_cnn").input_size_px == 96


def test_from_dict_rejects_unknown_and_missing_keys() -> None:
    data = _spec().to_dict()
    with pytest.raises(HistodetectError, match="unknown model spec keys colour"):
        ModelSpec.from_dict({**data, "colour": 1})
    del data["model_name"]
    with pytest.raises(HistodetectError, match="model_name"):
        ModelSpec.from_dict(data)


@pytest.mark.parametrize(
    "changes",
    [
        {"crop_px": 97},
        {"std": (1.0, 0.0, 1.0)},
        {"mean": (0.1, 0.2)},
        {"temperature": 0.0},
        {"threshold": 1.5},
        {"model_kwargs": {"input_size_px": 32}},
        {"model_kwargs": {"layer": object()}},
        {"class_names": ("a",)},
    ],
)
def test_invalid_values_raise(changes: dict[str, object]) -> None:
    with pytest.raises(HistodetectError):
        _spec(**changes)


def test_replace_validates_and_keeps_other_fields() -> None:
    spec = _spec()
    changed = spec.replace(threshold=0.8)
    assert changed.threshold == 0.8 and changed.crop_px == spec.crop_px
    with pytest.raises(HistodetectError):
        spec.replace(threshold=-1.0)
    with pytest.raises(HistodetectError):
        spec.replace(nonsense=1)


def test_build_model_uses_input_size() -> None:
    spec = _spec()
    model = build_model(spec)
    expected = create_model("seed_cnn", input_size_px=32, conv_channels=(4, 8, 8), dense_units=8)
    assert count_parameters(model) == count_parameters(expected)
    assert model(prepare_batch(torch.zeros(2, 96, 96, 3, dtype=torch.uint8), spec)).shape == (2,)


def test_prepare_batch_matches_hand_computation() -> None:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (2, 96, 96, 3), generator=generator, dtype=torch.uint8)
    spec = _spec()
    got = prepare_batch(pixels, spec)
    assert got.shape == (2, 3, 32, 32) and got.dtype == torch.float32
    for n, c, row, col in [(0, 0, 0, 0), (1, 2, 31, 31), (1, 1, 5, 17)]:
        raw = int(pixels[n, 32 + row, 32 + col, c])
        expected = (raw / 255.0 - spec.mean[c]) / spec.std[c]
        assert math.isclose(float(got[n, c, row, col]), expected, rel_tol=1e-5, abs_tol=1e-5)


@pytest.mark.parametrize("crop_px", [32, 33, 95, 96])
def test_prepare_batch_crops_before_converting_with_the_same_values(crop_px: int) -> None:
    # The uint8 crop comes first (a 32 px crop then converts 1/9 of the pixels); the result
    # must be bit-identical to converting the whole patch and cropping the floats.
    pixels = torch.randint(0, 256, (3, 96, 96, 3), dtype=torch.uint8)
    spec = ModelSpec("seed_cnn", crop_px=crop_px)
    got = prepare_batch(pixels, spec)
    assert torch.equal(got, normalise(pixels_to_float(pixels), spec))
    assert got.shape == (3, 3, crop_px, crop_px)


def test_prepare_batch_without_crop_is_scaled_pixels() -> None:
    pixels = torch.full((1, 96, 96, 3), 51, dtype=torch.uint8)
    got = prepare_batch(pixels, ModelSpec("seed_cnn"))
    assert got.shape == (1, 3, 96, 96)
    torch.testing.assert_close(got, torch.full_like(got, 0.2))


def test_pixels_to_float_is_channels_last_and_matches_contiguous() -> None:
    pixels = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    x = pixels_to_float(pixels)
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x.contiguous(), pixels.permute(0, 3, 1, 2).float() / 255)


@pytest.mark.parametrize(
    "pixels",
    [
        torch.zeros(2, 96, 96, 3, dtype=torch.float32),
        torch.zeros(2, 3, 96, 96, dtype=torch.uint8),
        torch.zeros(96, 96, 3, dtype=torch.uint8),
        torch.zeros(2, 64, 64, 3, dtype=torch.uint8),
    ],
)
def test_prepare_batch_rejects_wrong_input(pixels: torch.Tensor) -> None:
    with pytest.raises(HistodetectError, match=r"^Expected [^.]*\.$"):
        prepare_batch(pixels, _spec())


def test_normalise_rejects_uint8() -> None:
    with pytest.raises(HistodetectError):
        normalise(torch.zeros(1, 3, 96, 96, dtype=torch.uint8), _spec())


def test_logits_to_probability_uses_temperature() -> None:
    logits = torch.tensor([-3.0, 0.0, 3.0])
    probability = logits_to_probability(logits, _spec(temperature=2.0))
    torch.testing.assert_close(probability, torch.sigmoid(logits / 2.0))
    assert float(probability[2]) < float(torch.sigmoid(torch.tensor(3.0)))
    torch.testing.assert_close(
        logits_to_probability(logits, ModelSpec("seed_cnn")), torch.sigmoid(logits)
    )
