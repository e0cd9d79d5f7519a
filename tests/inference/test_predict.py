"""`histodetect predict` and the Predictor API on generated files, stores and PCam .h5 files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histodetect.cli.main import main
from histodetect.inference import inputs
from histodetect.inference.predictor import PredictionRow, Predictor, write_predictions_csv
from histodetect.inference.scoring import logits_to_probabilities, score_array
from histodetect.models import ModelSpec, build_model, tiny_model_kwargs
from histodetect.models.checkpoint import save_model
from imagefiles import make_kaggle, make_pcam, random_patch, save_image, save_tif

GOOD = ["a", "b", "c", "gray"]  # ids of the files in `image_folder` that can be predicted


def _save_tiny_model(path: Path, threshold: float = 0.5) -> Path:
    torch.manual_seed(0)
    spec = ModelSpec("histonet", tiny_model_kwargs("histonet"), threshold=threshold)
    model = build_model(spec)
    patches = np.random.default_rng(0).integers(0, 256, (8, 96, 96, 3), dtype=np.uint8)
    head = model.get_submodule("head")
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():  # spread the untrained model's outputs, centred on p = 0.4
        head.weight.mul_(50.0)
        logits = score_array(model.eval(), spec, patches, device=torch.device("cpu"))
        head.bias.add_(float(np.log(0.4 / 0.6) - logits.mean()))
    save_model(path, model, spec, {})
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_model(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def predictor(model_path: Path) -> Predictor:
    return Predictor(model_path, device="cpu")


@pytest.fixture
def image_folder(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Nested png/jpg/tif files plus a corrupt, an oversized, a 16-bit and ignored files."""
    root = tmp_path / "imgs"
    save_image(root / "a.png", random_patch(rng))
    save_image(root / "sub" / "b.jpg", random_patch(rng))
    save_tif(root / "sub" / "deeper" / "c.tif", random_patch(rng))
    save_image(root / "sub" / "gray.png", random_patch(rng)[:, :, 0], mode="L")
    save_image(root / "big.png", random_patch(rng, 128))
    save_tif(root / "z16.tif", rng.integers(0, 65535, (96, 96, 3), dtype=np.uint16))
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "notes.txt").write_text("not an image")
    save_image(root / ".hidden.png", random_patch(rng))
    return root


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _expected(predictor: Predictor, pixels: np.ndarray, tta: bool = False) -> np.ndarray:
    logits = score_array(predictor.model, predictor.spec, pixels, tta=tta)
    return logits_to_probabilities(logits, predictor.spec)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_folder_rows_keep_order_and_failures_do_not_stop_the_rest(
    predictor: Predictor, image_folder: Path
) -> None:
    rows = predictor.predict_paths([image_folder], progress=False, workers=1)
    assert [r.id for r in rows] == ["a", "bad", "big", "b", "c", "gray", "z16"]
    by_id = {r.id: r for r in rows}
    good = [by_id[i] for i in GOOD]
    assert all(r.error is None and r.probability is not None for r in good)
    pixels = np.stack([_pixels(Path(r.path)) for r in good])
    probs = np.array([r.probability for r in good])
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_allclose(probs, _expected(predictor, pixels), atol=1e-6)
    assert by_id["bad"].probability is None and "cannot be read" in str(by_id["bad"].error)
    assert "is 128x128 px, expected 96x96; use --resize or --center-crop" in str(by_id["big"].error)
    assert by_id["z16"].probability is None and "8-bit" in str(by_id["z16"].error)
    # A greyscale file is predicted, and says it was converted (as ingest reports it).
    assert "grayscale image converted to RGB" in str(by_id["gray"].note)
    assert [r.id for r in rows if r.note] == ["gray"]


def test_resize_and_center_crop_make_other_sizes_predictable(
    predictor: Predictor, tmp_path: Path, rng: np.random.Generator
) -> None:
    big = random_patch(rng, 128)
    save_image(tmp_path / "big.png", big)
    save_image(tmp_path / "small.png", random_patch(rng, 64))
    paths = [tmp_path / "big.png", tmp_path / "small.png"]
    cropped = predictor.predict_paths(paths, center_crop=True, progress=False)
    resized = predictor.predict_paths(paths, resize=True, progress=False)
    assert cropped[0].probability == pytest.approx(
        float(predictor.predict_pixels(big[None, 16:112, 16:112])[0]), abs=1e-6
    )
    assert resized[0].probability is not None
    assert resized[0].probability != cropped[0].probability
    assert "smaller than the 96x96 centre crop" in str(cropped[1].error)
    assert resized[1].probability is not None  # upsampled


def test_tta_is_the_mean_over_the_eight_dihedral_views(
    model_path: Path, predictor: Predictor, rng: np.random.Generator
) -> None:
    pixels = np.stack([random_patch(rng) for _ in range(5)])
    tta = Predictor(model_path, tta=True, device="cpu").predict_pixels(pixels)
    views = [np.rot90(p, k, axes=(1, 2)) for p in (pixels, pixels[:, :, ::-1]) for k in range(4)]
    mean = np.mean([predictor.predict_pixels(np.ascontiguousarray(v)) for v in views], axis=0)
    np.testing.assert_allclose(tta, mean, atol=1e-6)
    assert np.abs(tta - predictor.predict_pixels(pixels)).max() > 1e-4


def test_with_class_uses_the_model_threshold(
    tmp_path: Path, rng: np.random.Generator, image_folder: Path
) -> None:
    model = _save_tiny_model(tmp_path / "t03.pt", threshold=0.3)
    out = tmp_path / "pred.csv"
    argv = ["predict", str(image_folder), "--model", str(model), "--out", str(out)]
    assert main([*argv, "--with-class", "--no-progress"]) == 0
    rows = [r for r in _read_csv(out) if r["label"]]
    assert list(_read_csv(out)[0]) == ["id", "label", "class", "class_name", "error"]
    probs = np.array([float(r["label"]) for r in rows])
    assert ((probs >= 0.3) & (probs < 0.5)).any()  # a 0.5 threshold would call these normal
    assert [int(r["class"]) for r in rows] == (probs >= 0.3).astype(int).tolist()
    assert {r["class_name"] for r in rows} <= {"normal", "tumour"}


def test_cli_end_to_end_with_a_process_pool(
    model_path: Path,
    predictor: Predictor,
    image_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inputs, "FILES_PER_TASK", 2)  # several tasks, so the pool is used
    out = tmp_path / "out" / "predictions.csv"
    glob_arg = str(image_folder / "**" / "*.png")
    argv = ["predict", str(image_folder), glob_arg, "--model", str(model_path), "--out", str(out)]
    assert main([*argv, "--with-path", "--workers", "2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "6 predicted, 5 failed." in captured.out and str(out) in captured.out
    assert "note: 2 images were converted before prediction" in captured.err
    assert "gray.png: grayscale image converted to RGB" in captured.err
    assert str(model_path) in captured.out and "threshold 0.500" in captured.out
    written = _read_csv(out)
    assert list(written[0]) == ["id", "label", "path", "error"]
    png_ids = ["a", "bad", "big", "gray"]  # the glob, sorted by path
    assert [r["id"] for r in written] == ["a", "bad", "big", "b", "c", "gray", "z16", *png_ids]
    serial = predictor.predict_paths([image_folder], progress=False, workers=1)
    for row, ref in zip(written, serial, strict=False):
        assert row["label"] == ("" if ref.probability is None else f"{ref.probability:.6f}")
        assert row["error"] == (ref.error or "") and row["path"] == ref.path
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.csv"]  # no temp left


def test_kaggle_folder_store_and_pcam_h5(
    predictor: Predictor, tmp_path: Path, rng: np.random.Generator
) -> None:
    from histodetect.data.ingest import IngestOptions, ingest

    make_kaggle(tmp_path / "k", rng, n_train=4, n_test=3)
    store, _ = ingest(tmp_path / "k", tmp_path / "store", IngestOptions(workers=1, progress=False))
    make_pcam(tmp_path / "pcam", rng, {"test": 5})
    x_file = tmp_path / "pcam" / "camelyonpatch_level_2_split_test_x.h5"
    test_files = sorted((tmp_path / "k" / "test").glob("*.tif"))
    rows = predictor.predict_paths(
        [tmp_path / "k" / "test", tmp_path / "store", x_file], progress=False
    )
    assert [r.id for r in rows] == [
        *(p.stem for p in test_files),
        *store.manifest.ids.tolist(),
        *map(str, range(5)),
    ]
    assert rows[3].path == f"{tmp_path / 'store'}#0" and rows[-1].path == f"{x_file}#4"
    import h5py

    with h5py.File(x_file, "r") as f:
        h5_pixels = np.asarray(f["x"])
    pixels = np.concatenate([np.stack([_pixels(p) for p in test_files]), store.pixels, h5_pixels])
    probs = np.array([r.probability for r in rows])
    np.testing.assert_allclose(probs, _expected(predictor, pixels), atol=1e-6)


def test_existing_output_is_refused_without_overwrite(
    model_path: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pred.csv"
    out.write_text("mine\n")
    argv = ["predict", str(image_folder / "a.png"), "--model", str(model_path), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == "mine\n"
    # --overwrite replaces only a predictions CSV: the user's own file stays (catalogue:
    # tests/catalogue/test_overwrite.py)
    assert main([*argv, "--no-progress", "--overwrite"]) == 2
    assert "not a predictions CSV" in capsys.readouterr().err
    assert out.read_text() == "mine\n"
    out.write_text("id,label,error\nold,0.500000,\nbad,,cannot be read\n")  # an earlier prediction
    assert main([*argv, "--no-progress", "--overwrite"]) == 0
    assert [r["id"] for r in _read_csv(out)] == ["a"]


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing.png", "does not exist"),
        ("*.nothing", "no file matches"),
        ("notes.txt", "is not an image"),
        ("camelyonpatch_level_2_split_test_y.h5", "pass the _x file"),
    ],
)
def test_unusable_input_is_one_sentence_and_writes_nothing(
    model_path: Path,
    image_folder: Path,
    tmp_path: Path,
    rng: np.random.Generator,
    capsys: pytest.CaptureFixture[str],
    name: str,
    message: str,
) -> None:
    make_pcam(image_folder, rng, {"test": 1})
    out = tmp_path / "pred.csv"
    argv = ["predict", str(image_folder / "a.png"), str(image_folder / name), "--out", str(out)]
    assert main([*argv, "--model", str(model_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_duplicate_ids_keep_both_rows_and_add_the_path(
    model_path: Path, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder in ("one", "two"):
        save_image(tmp_path / folder / "same.png", random_patch(rng))
    out = tmp_path / "pred.csv"
    argv = ["predict", str(tmp_path / "one"), str(tmp_path / "two"), "--out", str(out)]
    assert main([*argv, "--model", str(model_path), "--no-progress"]) == 0
    assert capsys.readouterr().err.count("warning: 1 ids occur more than once") == 1
    written = _read_csv(out)
    assert list(written[0]) == ["id", "label", "path"]
    assert [r["id"] for r in written] == ["same", "same"]
    assert written[0]["label"] != written[1]["label"]


def test_write_predictions_csv_formats_rows(tmp_path: Path) -> None:
    spec = ModelSpec("histonet", threshold=0.25, class_names=("benign", "metastasis"))
    rows = [PredictionRow("x", "x.png", 0.123456789), PredictionRow("y", "y.png", None, "broken")]
    columns = write_predictions_csv(rows, tmp_path / "p.csv", with_class=True, spec=spec)
    assert columns == ["id", "label", "class", "class_name", "error"]
    assert (tmp_path / "p.csv").read_text().splitlines() == [
        "id,label,class,class_name,error",
        "x,0.123457,0,benign,",
        "y,,,,broken",
    ]


def test_a_predictions_csv_is_recognised_by_its_rows(tmp_path: Path) -> None:
    """--overwrite replaces what predict wrote, also after an editor's BOM or last blank line,
    and never a labels CSV with predict's header (Kaggle's train_labels.csv)."""
    from histodetect.inference.predictor import is_predictions_csv

    cases = {
        "ours": ("id,label,class,class_name,path,error\r\na,0.250000,0,normal,x/a.png,\r\n"
                 "b,,,,x/b.png,cannot be read\r\n", True),
        "bom and blank line": ("\ufeffid,label\na,1.000000\n\n", True),
        "header only": ("id,label\n", True),
        "labels": ("id,label\na,0\nb,1\n", False),
        "rounded": ("id,label\na,0.25\n", False),
        "empty label, no reason": ("id,label,error\na,,\n", False),
        "above one": ("id,label\na,1.500000\n", False),
    }  # fmt: skip
    for name, (text, ours) in cases.items():
        path = tmp_path / f"{name}.csv"
        path.write_bytes(text.encode("utf-8"))
        assert is_predictions_csv(path) == ours, name
