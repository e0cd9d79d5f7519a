"""The word `bundled` names the shipped model wherever a model path is taken, and never hides a
file or folder of that name in the working folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histodetect.cli.main import main
from histodetect.modelfiles import bundled_model_path, names_bundled, resolve_model_path
from histodetect.models import tiny_model_kwargs
from histodetect.models.checkpoint import load_checkpoint
from imagefiles import make_synthetic_store


def test_the_word_names_the_bundled_model_unless_something_here_has_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert names_bundled(None) and names_bundled("bundled") and names_bundled(Path("bundled"))
    assert resolve_model_path("bundled") == bundled_model_path()
    assert not names_bundled("bundled.pt") and not names_bundled("./other")
    (tmp_path / "bundled").mkdir()
    (tmp_path / "bundled" / "model.pt").write_bytes(b"a run folder of the user's")
    assert not names_bundled("bundled")
    assert resolve_model_path("bundled") == Path("bundled") / "model.pt"


def test_predict_and_export_take_the_word(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    (tmp_path / "patches").mkdir()
    for i in range(3):
        pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "patches" / f"p{i}.png")
    assert main(["predict", "patches", "--model", "bundled", "--out", "out.csv"]) == 0
    with (tmp_path / "out.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    pytest.importorskip("onnxruntime")
    assert main(["export", "bundled", "--out", "model.onnx"]) == 0
    assert (tmp_path / "model.onnx").stat().st_size > 1_000_000


def test_train_takes_the_word_as_teacher(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    make_synthetic_store(store, n=96)
    out = tmp_path / "run"
    code = main(["train", "--data", str(store), "--out", str(out), "--teacher", "bundled",
                 "--model", "histonet", "--model-kwargs", json.dumps(tiny_model_kwargs("histonet")),
                 "--epochs", "1", "--batch-size", "32", "--no-progress"])  # fmt: skip
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["teacher"] == str(bundled_model_path())
    # the run ends by saying how to calibrate it, with a command that works as printed
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said.startswith("Next: `histodetect calibrate "), said
    import shlex

    command = shlex.split(said.split("`")[1])
    assert main(command[1:]) == 0
    assert "calibration" in load_checkpoint(out / "model.pt").metadata


def test_only_the_first_ddp_process_prints_the_run_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a README walk: `--devices 2` printed "Run folder ... / Next: ..." twice, once per
    worker (each re-runs the command)."""
    from histodetect.training import fit as fit_module
    from histodetect.training.fit import FitResult

    store = tmp_path / "store"
    make_synthetic_store(store, n=96)
    out = tmp_path / "run"

    def finished(config: object, **kwargs: object) -> FitResult:
        out.mkdir()
        (out / "config.json").write_text(json.dumps({"data": str(store), "out": str(out)}))
        return FitResult(out, out / "model.pt", 0.5, 1, 1.0)

    monkeypatch.setattr(fit_module, "fit", finished)
    argv = ["train", "--data", str(store), "--out", str(out), "--no-progress"]
    for rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        if out.exists():
            import shutil

            shutil.rmtree(out)
        assert main(argv) == 0
        assert ("Run folder:" in capsys.readouterr().out) == printed, rank
