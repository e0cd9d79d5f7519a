"""--overwrite replaces only what histodetect wrote, and no command writes over its own input.

Each case was a defect found by an audit (29 Nov): `predict --overwrite` turned an input image
and a store's manifest.csv into prediction CSVs, `export` and `ensemble` replaced any file, and
`evaluate` wrote into any folder (a user's report.html among them) without being asked.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from histodetect.cli.main import main
from histodetect.models import tiny_model_kwargs
from imagefiles import make_synthetic_store

TINY = ["--model", "histonet", "--model-kwargs", json.dumps(tiny_model_kwargs("histonet"))]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ow") / "store"
    make_synthetic_store(path, n=120)
    return path


@pytest.fixture(scope="module")
def run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ow") / "run"
    argv = ["train", "--data", str(store), "--out", str(out), *TINY, "--epochs", "1"]
    assert main([*argv, "--batch-size", "32", "--no-progress"]) == 0
    return out


@dataclass(frozen=True)
class Case:
    """`build(tmp, store, run)` makes the victim file and returns (command line, victim)."""

    name: str
    build: Callable[[Path, Path, Path], tuple[list[str], Path]]
    says: tuple[str, ...]


def _image(tmp: Path) -> Path:
    path = tmp / "inputs" / "a.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 96), (200, 120, 180)).save(path)
    return path


def _own_file(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.write_text("my own notes\n")
    return path


def _store_copy(tmp: Path, store: Path) -> Path:
    copy = tmp / "store_copy"
    shutil.copytree(store, copy)
    return copy


def _predict_over_input(t: Path, s: Path, r: Path) -> tuple[list[str], Path]:
    image = _image(t)
    return ["predict", str(image.parent), "--model", str(r), "--out", str(image)], image


def _predict_over_manifest(t: Path, s: Path, r: Path) -> tuple[list[str], Path]:
    manifest = _store_copy(t, s) / "manifest.csv"
    return ["predict", str(manifest.parent), "--model", str(r), "--out", str(manifest)], manifest


def _predict_into_store(t: Path, s: Path, r: Path) -> tuple[list[str], Path]:
    copy = _store_copy(t, s)
    return [
        "predict",
        str(copy),
        "--model",
        str(r),
        "--out",
        str(copy / "p.csv"),
    ], copy / "header.json"


def _predict_over_own_csv(t: Path, s: Path, r: Path) -> tuple[list[str], Path]:
    thesis = _own_file(t, "thesis.csv")
    return ["predict", str(_image(t).parent), "--model", str(r), "--out", str(thesis)], thesis


def _predict_over_own_labels(t: Path, s: Path, r: Path) -> tuple[list[str], Path]:
    """Kaggle's train_labels.csv has predict's header (id,label): the header alone let
    --overwrite replace a user's ground truth (from a bad-input hunt, 7 Dec)."""
    labels = t / "train_labels.csv"
    labels.write_text(
        "id,label\nf38a6374c348f90b587e046aac6079959adf3835,0\nc18f2d887b7ae4f6742ee445113fa1aef383ed77,1\n"
    )
    return ["predict", str(_image(t).parent), "--model", str(r), "--out", str(labels)], labels


def _ensemble_over_own_file(t: Path, s: Path, r: Path) -> tuple[list[str], Path]:
    mine = _own_file(t, "weights.pt")
    return ["ensemble", str(r), str(r), "--out", str(mine)], mine


def _evaluate_over_own_folder(t: Path, s: Path, r: Path) -> tuple[list[str], Path]:
    folder = t / "myreport"
    folder.mkdir()
    mine = _own_file(folder, "report.html")
    return ["evaluate", str(r), "--data", str(s), "--out", str(folder)], mine


def _evaluate_over_a_user_metrics_json(t: Path, s: Path, r: Path) -> tuple[list[str], Path]:
    """From a review: a folder holding only a file named metrics.json passed for a report."""
    folder = t / "experiment"
    folder.mkdir()
    mine = folder / "metrics.json"
    mine.write_text('{"my_experiment": "weeks of results"}\n')
    return ["evaluate", str(r), "--data", str(s), "--out", str(folder)], mine


def _evaluate_over_report_with_extras(t: Path, s: Path, r: Path) -> tuple[list[str], Path]:
    folder = t / "rep"
    assert (
        main(["evaluate", str(r), "--data", str(s), "--out", str(folder), "--bootstrap", "5"]) == 0
    )
    mine = _own_file(folder, "notes.txt")
    return ["evaluate", str(r), "--data", str(s), "--out", str(folder)], mine


CASES = [
    Case("predict over one of its input images", _predict_over_input, ("a.png", "not a predictions CSV")),
    Case("predict over a store's manifest", _predict_over_manifest, ("manifest.csv", "inside the patch store")),
    Case("predict into a store folder", _predict_into_store, ("inside the patch store", "elsewhere")),
    Case("predict over a user's CSV", _predict_over_own_csv, ("thesis.csv", "not a predictions CSV")),
    Case("predict over a user's labels CSV", _predict_over_own_labels, ("train_labels.csv", "not a predictions CSV")),
    Case("ensemble over a user's file", _ensemble_over_own_file, ("weights.pt", "not a histodetect model file")),
    Case("evaluate over a user's folder", _evaluate_over_own_folder, ("myreport", "holds no metrics.json")),
    Case("evaluate over a user's metrics.json", _evaluate_over_a_user_metrics_json, ("experiment", "holds no metrics.json that evaluate wrote")),
    Case("evaluate over a report with a user's file", _evaluate_over_report_with_extras, ("notes.txt", "not an evaluate report")),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_overwrite_never_replaces_what_histodetect_did_not_write(
    case: Case, store: Path, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, victim = case.build(tmp_path, store, run)
    before = victim.read_bytes()
    capsys.readouterr()
    code = main([*argv, "--overwrite"] + (["--no-progress"] if argv[0] == "predict" else []))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in case.says:
        assert fragment in err, (fragment, err)
    assert victim.read_bytes() == before, f"{victim} was changed"


def test_export_over_a_foreign_onnx_file_is_refused(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxscript")
    mine = _own_file(tmp_path, "model.onnx")
    code = main(["export", str(run), "--format", "onnx", "--out", str(mine), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "not an ONNX model that histodetect wrote" in err, err
    assert mine.read_text() == "my own notes\n"
    theirs = tmp_path / "ours.onnx"  # one export wrote may be replaced
    assert main(["export", str(run), "--format", "onnx", "--out", str(theirs)]) == 0
    assert main(["export", str(run), "--format", "onnx", "--out", str(theirs), "--overwrite"]) == 0


def test_evaluate_replaces_its_own_report_only_when_asked(
    store: Path, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    argv = ["evaluate", str(run), "--data", str(store), "--out", str(out), "--bootstrap", "5"]
    assert main(argv) == 0
    first = (out / "metrics.json").read_bytes()
    assert main(argv) == 2  # exists: refused without --overwrite, nothing changed
    assert "already exists" in capsys.readouterr().err
    assert (out / "metrics.json").read_bytes() == first
    assert main([*argv, "--overwrite", "--split", "train"]) == 0
    assert json.loads((out / "metrics.json").read_text())["split"] == "train"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporaries left"


def test_a_refused_ensemble_leaves_no_folder(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = _own_file(tmp_path, "broken.pt")
    out = tmp_path / "new" / "ens" / "model.pt"
    assert main(["ensemble", str(run), str(broken), "--out", str(out)]) == 2
    assert "broken.pt" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
