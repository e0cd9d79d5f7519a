"""Grad-CAM for every registered model family, and `histodetect explain` end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from histodetect.cli.main import main
from histodetect.errors import HistodetectError
from histodetect.explain.gradcam import explained_parts, feature_stage, gradcam, gradcam_overlays
from histodetect.models import ModelSpec, create_model, model_names, tiny_model_kwargs

pytest.importorskip("captum", reason="the explain extra (captum) is not installed")


def _tiny(name: str) -> tuple[nn.Module, ModelSpec]:
    kwargs = tiny_model_kwargs(name)
    try:
        model = create_model(name, input_size_px=96, **kwargs)
    except HistodetectError as exc:  # an optional dependency (timm) is not installed
        pytest.skip(str(exc))
    torch.manual_seed(0)
    for p in model.parameters():  # random weights everywhere, so no map is all zero
        nn.init.normal_(p, std=0.2)
    return model.eval(), ModelSpec(name, model_kwargs=kwargs, mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.mark.parametrize("name", model_names())
def test_every_family_has_a_spatial_features_stage(name: str, rng: np.random.Generator) -> None:
    model, spec = _tiny(name)
    maps: list[torch.Tensor] = []
    for _, stage in explained_parts(model):  # the model's features stage, or its members'
        stage.register_forward_hook(lambda m, i, o: maps.append(o))
    model(torch.zeros(2, 3, 96, 96))
    assert maps and all(m.ndim == 4 and m.shape[0] == 2 and min(m.shape[2:]) > 1 for m in maps)
    pixels = rng.integers(0, 256, size=(3, 96, 96, 3), dtype=np.uint8)
    tumour = gradcam(model, spec, pixels, target="tumour")
    normal = gradcam(model, spec, pixels, target="normal")
    assert tumour.shape == (3, 96, 96) and tumour.dtype == np.float32
    for heat in (tumour, normal):
        assert heat.min() >= 0 and heat.max() <= 1
    # Grad-CAM is relu(+S) for tumour and relu(-S) for normal: one of them shows something.
    assert (np.maximum(tumour, normal).max(axis=(1, 2)) > 0).all()


@pytest.mark.parametrize("channels, side", [((4, 8, 8, 8), 6), ((4, 8, 8, 8, 8), 6), ((4, 8), 24)])
def test_histocnn_is_explained_at_its_deepest_map_of_at_least_6_cells(
    channels: tuple[int, ...], side: int
) -> None:
    # A fifth block leaves a 3 x 3 map (32 px cells): Grad-CAM there could only say "centre or
    # not"; the block before it (6 x 6) still shows where.
    model = create_model("histocnn", input_size_px=96, conv_channels=channels, dense_units=8)
    maps: list[torch.Tensor] = []
    feature_stage(model).register_forward_hook(lambda m, i, o: maps.append(o))
    model.eval()(torch.zeros(1, 3, 96, 96))
    assert maps[0].shape[2:] == (side, side)


def test_unknown_family_is_named() -> None:
    with pytest.raises(HistodetectError, match="does not know the model family Sequential"):
        feature_stage(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_heat_stays_inside_the_centre_crop(rng: np.random.Generator) -> None:
    model, spec = _tiny("histocnn")
    spec = spec.replace(crop_px=48)
    model = create_model("histocnn", input_size_px=48, **tiny_model_kwargs("histocnn")).eval()
    heat = gradcam(model, spec, rng.integers(0, 256, size=(2, 96, 96, 3), dtype=np.uint8))
    outside = np.ones((96, 96), dtype=bool)
    outside[24:72, 24:72] = False
    assert heat.shape == (2, 96, 96) and not heat[:, outside].any()


def test_overlays_are_rgb_patches(rng: np.random.Generator) -> None:
    model, spec = _tiny("seed_cnn")
    pixels = rng.integers(0, 256, size=(4, 96, 96, 3), dtype=np.uint8)
    overlays = gradcam_overlays(model, spec, pixels)
    assert len(overlays) == 4
    assert all(o.shape == (96, 96, 3) and o.dtype == np.uint8 for o in overlays)
    assert any((o != p).any() for o, p in zip(overlays, pixels, strict=True))


def test_explain_command_writes_probabilities_and_overlays(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    valid = shared_data / "pcam-subset" / "valid"
    patches = [sorted((valid / c).glob("*.jpg"))[0] for c in ("0", "1")]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "explained"
    argv = ["explain", *map(str, patches), str(tmp_path / "broken.png"), "--out", str(out)]
    assert main([*argv, "--no-progress", "--device", "cpu", "--workers", "1"]) == 0
    with (out / "explanations.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [p.stem for p in patches] + ["broken"]
    assert rows[2]["error"] and not rows[2]["overlay"]
    from histodetect.inference.predictor import Predictor

    expected = Predictor(None, device="cpu").predict_pixels(
        np.stack([np.asarray(Image.open(p).convert("RGB")) for p in patches])
    )
    np.testing.assert_allclose([float(r["probability"]) for r in rows[:2]], expected, atol=1e-6)
    image = np.asarray(Image.open(out / rows[1]["overlay"]))
    assert image.shape == (288, 576, 3)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [r["overlay"] for r in rows[:2]] + ["explanations.csv"]
    )
    assert main([*argv, "--no-progress"]) == 2  # exists: refused without --overwrite
    assert "already exists" in capsys.readouterr().err
    # --overwrite replaces only what explain wrote: a user's file in the folder stops it (it
    # deleted the file until this case was added)
    (out / "notes.txt").write_text("mine\n")
    assert main([*argv, "--no-progress", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "explain did not write" in err and "Traceback" not in err
    assert (out / "notes.txt").read_text() == "mine\n" and (out / rows[1]["overlay"]).is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{tmp}/nothing.png", "--out", "{tmp}/o"], "does not exist"),
        (["{patch}", "--out", "{tmp}/file.txt"], "--out {tmp}/file.txt is a file"),
    ],
)
def test_explain_bad_input_is_one_sentence(
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    (tmp_path / "file.txt").write_text("mine\n")
    patch = next((shared_data / "pcam-subset" / "valid" / "1").glob("*.jpg"))
    names = {"tmp": str(tmp_path), "patch": str(patch)}
    assert main(["explain", *(a.format(**names) for a in argv), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(**names) in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_explain_lists_a_patch_given_twice_twice_and_fits_other_sizes(
    shared_data: Path, tmp_path: Path
) -> None:
    patch = sorted((shared_data / "pcam-subset" / "valid" / "1").glob("*.jpg"))[0]
    small = tmp_path / "small.png"  # explain advised --resize for it, an option it lacked
    Image.open(patch).convert("RGB").resize((50, 50)).save(small)
    out = tmp_path / "explained"
    argv = ["explain", str(patch), str(patch), str(small), "--out", str(out), "--no-progress"]
    assert main([*argv, "--device", "cpu", "--workers", "1"]) == 0
    with (out / "explanations.csv").open() as f:
        small_row = list(csv.DictReader(f))[2]
    assert "--resize" in small_row["error"] and not small_row["overlay"]
    assert main([*argv, "--device", "cpu", "--workers", "1", "--resize", "--overwrite"]) == 0
    with (out / "explanations.csv").open() as f:
        rows = list(csv.DictReader(f))
    # both copies of the patch get their own PNG (the first was left unlisted before)
    overlays = [r["overlay"] for r in rows]
    assert [r["id"] for r in rows] == [patch.stem, patch.stem, "small"] and "" not in overlays
    assert len(set(overlays)) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted([*overlays, "explanations.csv"])
    assert rows[0]["probability"] == rows[1]["probability"]
    assert main([*argv, "--resize", "--overwrite"]) == 0  # explain's own folder stays its own


def test_the_predicted_class_explained_is_the_reported_one(rng: np.random.Generator) -> None:
    """From a review: the "predicted" sign came from one fp32 view while explain and /v1/explain
    report the class of predict_pixels (--tta, bf16), so near the threshold Grad-CAM could
    explain the other class. Given the reported probabilities, it explains theirs."""
    model, spec = _tiny("histocnn")
    pixels = rng.integers(0, 256, size=(3, 96, 96, 3), dtype=np.uint8)
    above = np.full(3, spec.threshold + 0.01)
    below = np.full(3, spec.threshold - 0.01)
    as_tumour = gradcam(model, spec, pixels, probabilities=above)
    as_normal = gradcam(model, spec, pixels, probabilities=below)
    np.testing.assert_allclose(as_tumour, gradcam(model, spec, pixels, target="tumour"))
    np.testing.assert_allclose(as_normal, gradcam(model, spec, pixels, target="normal"))
    assert not np.allclose(as_tumour, as_normal)  # the two classes have different evidence
    with pytest.raises(HistodetectError, match="2 probabilities for 3 patches"):
        gradcam(model, spec, pixels, probabilities=above[:2])
