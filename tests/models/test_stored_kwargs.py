"""A builder option added after models were saved (histocnn's input_norm, 8 Dec) keeps every
model saved before it computing what it computed: a file names every option it was built with,
and one it lacks gets the value from before the option existed, not today's default."""

from __future__ import annotations

from pathlib import Path

import torch

from histodetect.models import ModelSpec, build_model, resolved_model_kwargs, stored_model_kwargs
from histodetect.models.checkpoint import load_checkpoint, save_model
from histodetect.models.ensemble import build_ensemble

TINY = {"conv_channels": [4, 8], "dense_units": 8}


def _old_file(path: Path, seed: int) -> tuple[Path, torch.nn.Module]:
    """A histocnn file as histodetect wrote it before input_norm existed (no such key)."""
    torch.manual_seed(seed)
    spec = ModelSpec("histocnn", {**TINY, "input_norm": "none"})
    model = build_model(spec).eval()
    save_model(path, model, spec, {})
    payload = torch.load(path, weights_only=False)
    del payload["model_spec"]["model_kwargs"]["input_norm"]
    torch.save(payload, path)
    return path, model


def test_the_new_default_is_instance_and_a_saved_file_names_it() -> None:
    assert resolved_model_kwargs("histocnn", TINY)["input_norm"] == "instance"
    assert stored_model_kwargs("histocnn", TINY)["input_norm"] == "none"
    assert stored_model_kwargs("histocnn", {**TINY, "input_norm": "instance"})["input_norm"] == (
        "instance"
    )


def test_a_file_saved_with_options_left_out_names_today_s_defaults(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ModelSpec("histocnn", TINY)  # input_norm left out: built with today's default
    model = build_model(spec).eval()
    save_model(tmp_path / "model.pt", model, spec, {})
    saved = torch.load(tmp_path / "model.pt", weights_only=False)["model_spec"]["model_kwargs"]
    assert saved["input_norm"] == "instance"
    x = torch.rand(3, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "model.pt").model(x), model(x))


def test_a_model_saved_before_input_norm_rebuilds_without_it(tmp_path: Path) -> None:
    path, original = _old_file(tmp_path / "old.pt", seed=0)
    loaded = load_checkpoint(path)
    assert loaded.spec.model_kwargs["input_norm"] == "none"
    x = torch.rand(3, 3, 96, 96) * 0.5 + 0.2  # with instance norm the logits would differ
    with torch.no_grad():
        assert torch.equal(loaded.model(x), original(x))


def test_ensemble_members_saved_before_input_norm_rebuild_without_it() -> None:
    torch.manual_seed(0)
    members = [{"model": "histocnn", "kwargs": dict(TINY)} for _ in range(2)]  # old: no key
    ensemble = build_ensemble(members=members)
    assert all(member.input_norm == "none" for member in ensemble.members)  # type: ignore[attr-defined]
