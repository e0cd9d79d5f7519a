"""int8 weight storage (`save_model(int8_weights=True)`, used for the bundled model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from histodetect.errors import HistodetectError
from histodetect.models import ModelSpec, build_model
from histodetect.models.checkpoint import load_checkpoint, save_model


def test_int8_weights_load_back_close_and_a_quarter_of_the_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # three blocks: a 128 x 12 x 12 flatten, so the dense matrix dominates the file
    spec = ModelSpec("histocnn", {"dense_units": 64, "conv_channels": [32, 64, 128]})
    model = build_model(spec).eval()
    save_model(tmp_path / "fp32.pt", model, spec, {})
    save_model(tmp_path / "int8.pt", model, spec, {}, int8_weights=True)
    assert (tmp_path / "int8.pt").stat().st_size < 0.3 * (tmp_path / "fp32.pt").stat().st_size
    loaded = load_checkpoint(tmp_path / "int8.pt").model
    for name, original in model.state_dict().items():
        restored = loaded.state_dict()[name]
        assert restored.dtype == original.dtype and restored.shape == original.shape
        if original.is_floating_point():  # within half a step of its channel's scale
            bound = original.abs().amax() / 127 / 2 + 1e-7
            assert float((restored - original).abs().max()) <= float(bound)
    x = torch.rand(4, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=0.05)


def test_a_damaged_int8_file_is_refused(tmp_path: Path) -> None:
    spec = ModelSpec("histocnn", {"dense_units": 64})
    path = tmp_path / "int8.pt"
    save_model(path, build_model(spec), spec, {}, int8_weights=True)
    payload = torch.load(path, weights_only=True)
    scale_key = next(k for k in payload["state_dict"] if k.endswith(".int8_scale"))
    payload["state_dict"][scale_key] = payload["state_dict"][scale_key] * 2
    torch.save(payload, path)
    with pytest.raises(HistodetectError, match="damaged"):
        load_checkpoint(path)
