"""Tests for the model registry and every registered model's tiny variant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from histodetect.errors import HistodetectError
from histodetect.models import (
    DEFAULT_MODEL,
    count_parameters,
    create_model,
    list_models,
    model_names,
    register_model,
    registry,
    tiny_model_kwargs,
)
from histodetect.models.histonet import HistoNet
from histodetect.models.seed_cnn import SeedCNN, feature_map_side_px

SRC = str(Path(__file__).resolve().parents[2] / "src")
BUILDABLE = [name for name in model_names() if name != "timm"]


@pytest.mark.parametrize("name", BUILDABLE)
@pytest.mark.parametrize("size_px", [96, 32])
def test_tiny_variant_forward_backward(name: str, size_px: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, input_size_px=size_px, **tiny_model_kwargs(name))
    x = torch.rand(2, 3, size_px, size_px)
    logits = model(x)
    assert logits.shape == (2,)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads if g is not None)


@pytest.mark.parametrize("name", BUILDABLE)
def test_tiny_variant_channels_last(name: str) -> None:
    model = create_model(name, **tiny_model_kwargs(name)).eval()
    x = torch.rand(2, 3, 96, 96)
    expected = model(x)
    model_cl = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    got = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_list_models_parameter_counts_match_default_builds() -> None:
    infos = {info.name: info for info in list_models()}
    assert set(infos) == set(model_names())
    assert DEFAULT_MODEL in infos
    for name in BUILDABLE:
        assert infos[name].description
        if name == "ensemble":  # built from trained runs: no default build to count
            assert infos[name].parameter_count is None
            continue
        assert infos[name].parameter_count == count_parameters(create_model(name))


def test_default_model_is_small_enough_for_cpu() -> None:
    # histocnn: about 1.8 M parameters, most in the four conv blocks and the dense head
    assert 100_000 < count_parameters(create_model(DEFAULT_MODEL)) < 6_000_000


def test_timm_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(HistodetectError, match=r"pip install 'histodetect\[timm\]'"):
        create_model("timm")
    info = next(info for info in list_models() if info.name == "timm")
    assert info.parameter_count is None


def test_timm_not_imported_by_core() -> None:
    code = "import sys, histodetect.models; sys.exit('timm' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": SRC})


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(HistodetectError, match="Unknown model 'nope'") as caught:
        create_model("nope")
    assert "seed_cnn" in str(caught.value) and DEFAULT_MODEL in str(caught.value)


def test_unknown_kwarg_lists_valid_kwargs() -> None:
    with pytest.raises(HistodetectError, match="does not accept colour") as caught:
        create_model("seed_cnn", colour=3)
    assert "conv_channels" in str(caught.value) and "input_size_px" in str(caught.value)


def test_duplicate_registration_raises() -> None:
    with pytest.raises(HistodetectError, match="already registered"):
        register_model("seed_cnn", SeedCNN, description="again", tiny_kwargs={})


def _tiny_builder(*, input_size_px: int = 96, width: int = 2) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(0))


def test_register_validates_builder_and_tiny_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model("probe", _tiny_builder, description="probe", tiny_kwargs={"width": 1})
    assert "probe" in model_names()
    with pytest.raises(HistodetectError, match="valid keyword arguments"):
        register_model("probe2", _tiny_builder, description="x", tiny_kwargs={"depth": 1})

    def takes_kwargs(*, input_size_px: int = 96, **kwargs: int) -> nn.Module:
        return _tiny_builder()

    with pytest.raises(HistodetectError, match=r"\*\*kwargs"):
        register_model("probe3", takes_kwargs, description="x", tiny_kwargs={})


def test_seed_cnn_structure_matches_write_up() -> None:
    model = create_model("seed_cnn")
    assert isinstance(model, SeedCNN)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)  # Keras 'valid'
    assert len(pools) == 3
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (128 * 10 * 10, 256),
        (256, 1),
    ]
    assert [d.p for d in dropouts] == [0.5]
    assert not any(isinstance(m, nn.Sigmoid) for m in model.modules())  # sigmoid is in the loss


def test_seed_cnn_sizes_and_finite_output() -> None:
    assert feature_map_side_px(96, 3) == 10
    assert feature_map_side_px(32, 3) == 2
    model = create_model("seed_cnn", input_size_px=32).eval()
    first_dense = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first_dense.in_features == 128 * 2 * 2
    logits = model(torch.rand(3, 3, 32, 32) * 255)  # even badly scaled input stays finite
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    with pytest.raises(HistodetectError):
        create_model("seed_cnn", input_size_px=20)


def test_histonet_downsamples_only_2x_in_stem() -> None:
    model = create_model("histonet_s", **tiny_model_kwargs("histonet_s"))
    assert isinstance(model, HistoNet)
    assert model.stem(torch.rand(1, 3, 96, 96)).shape[-2:] == (48, 48)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
