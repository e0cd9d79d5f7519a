"""evaluate(): calibration on one split, report on another, honest split roles, refusals."""

import json
from pathlib import Path

import pytest
import torch

from histodetect.cli.main import main
from histodetect.errors import HistodetectError
from histodetect.evaluation.evaluate import EvaluateOptions, evaluate
from histodetect.models import ModelSpec, build_model, tiny_model_kwargs
from histodetect.models.checkpoint import load_checkpoint, save_model
from histodetect.training.config import resolve_config
from histodetect.training.fit import fit
from imagefiles import make_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "store"
    make_synthetic_store(path, n=240, holdout=("valid", "test"))
    return path


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    spec = ModelSpec("histonet", tiny_model_kwargs("histonet"))
    save_model(tmp_path / "model.pt", build_model(spec), spec, {})
    return tmp_path / "model.pt"


def test_calibrate_on_valid_report_on_test(store: Path, model_file: Path, tmp_path: Path) -> None:
    opts = EvaluateOptions(
        split="test", calibrate_on="valid", threshold="sensitivity=0.9", n_boot=50
    )
    m = evaluate(model_file, store, tmp_path / "report", opts)
    assert m["split"] == "test" and m["split_role"] == "held-out split" and m["n"] == 60
    assert (tmp_path / "report" / "report.html").is_file()
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert (
        saved["auc"] == pytest.approx(m["auc"]) and saved["threshold_method"] == "sensitivity=0.9"
    )
    loaded = load_checkpoint(model_file)
    assert loaded.spec.threshold == pytest.approx(m["threshold"])
    assert (
        loaded.spec.temperature == pytest.approx(m["temperature"])
        and loaded.spec.temperature != 1.0
    )
    assert loaded.metadata["calibration"]["split"] == "valid"
    # reporting the calibration split afterwards is allowed but labelled optimistic
    again = evaluate(model_file, store, tmp_path / "r2", EvaluateOptions(split="valid", n_boot=20))
    assert "optimistic" in again["split_role"]


def test_fitting_on_the_reported_split_is_refused(
    store: Path, model_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(HistodetectError, match="another split than the one reported"):
        evaluate(
            model_file, store, tmp_path / "r", EvaluateOptions(split="test", calibrate_on="test")
        )
    with pytest.raises(HistodetectError, match="has no split 'holdout'"):
        evaluate(model_file, store, tmp_path / "r", EvaluateOptions(split="holdout"))


@pytest.mark.parametrize(
    "calibrate_on, split, shared", [("all", "test", 60), ("val", "valid", 60), ("valid", "all", 60)]
)
def test_calibration_on_patches_the_report_scores_is_refused(
    store: Path, model_file: Path, tmp_path: Path, calibrate_on: str, split: str, shared: int
) -> None:
    """From a review: only the option strings were compared, so these fitted the threshold on
    the reported patches and called them a held-out split; the model file stays untouched."""
    before = model_file.read_bytes()
    opts = EvaluateOptions(split=split, calibrate_on=calibrate_on, n_boot=20)
    with pytest.raises(HistodetectError, match=f"share {shared} patches; fit the threshold"):
        evaluate(model_file, store, tmp_path / "r", opts)
    assert model_file.read_bytes() == before and not (tmp_path / "r").exists()


def test_a_refused_evaluation_leaves_the_model_file_uncalibrated(
    store: Path, model_file: Path, tmp_path: Path
) -> None:
    """From a review: `--split tset --calibrate-on train` saved a calibration into the model,
    then stopped on the unknown split."""
    before = model_file.read_bytes()
    opts = EvaluateOptions(split="tset", calibrate_on="train", n_boot=20)
    with pytest.raises(HistodetectError, match="has no split 'tset'"):
        evaluate(model_file, store, tmp_path / "r", opts)
    assert model_file.read_bytes() == before


def test_a_failed_evaluation_after_calibrating_leaves_the_model_file_as_it_was(
    store: Path, model_file: Path, tmp_path: Path
) -> None:
    """From a review: the calibration was saved before the report was written, so an --out
    under a file (or Ctrl-C during --shift) left the model recalibrated and no report."""
    before = model_file.read_bytes()
    (tmp_path / "afile").write_text("a file, not a folder\n")
    opts = EvaluateOptions(split="test", calibrate_on="valid", n_boot=20)
    with pytest.raises((HistodetectError, OSError)):
        evaluate(model_file, store, tmp_path / "afile" / "report", opts)
    assert model_file.read_bytes() == before
    evaluate(model_file, store, tmp_path / "report", opts)  # and once it succeeds, it is saved
    assert load_checkpoint(model_file).metadata["calibration"]["split"] == "valid"


@pytest.mark.parametrize(("fitted_on", "note"), [("all", "also fitted"), ("test", "also fitted")])
def test_a_report_on_patches_the_calibration_saw_says_so_whatever_the_split_names(
    store: Path, model_file: Path, tmp_path: Path, fitted_on: str, note: str
) -> None:
    """From a review: only the split names were compared, so `calibrate --split all` and then
    `evaluate --split test` reported test as a held-out split."""
    torch.manual_seed(3)  # an untrained model whose scores vary (some inits give one score)
    spec = ModelSpec("histonet", tiny_model_kwargs("histonet"))
    save_model(model_file, build_model(spec), spec, {})
    assert main(["calibrate", str(model_file), "--data", str(store), "--split", fitted_on]) == 0
    role = evaluate(model_file, store, tmp_path / "r", EvaluateOptions(split="test", n_boot=20))
    assert note in role["split_role"] and "optimistic" in role["split_role"]
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert "optimistic" in saved["split_role"]
    whole = evaluate(model_file, store, tmp_path / "w", EvaluateOptions(split="all", n_boot=20))
    assert "optimistic" in whole["split_role"]  # the report holds the calibration's patches
    if fitted_on == "test":
        assert "60 of its 240 patches" in whole["split_role"]
    held_out = evaluate(
        model_file, store, tmp_path / "v", EvaluateOptions(split="valid", n_boot=20)
    )
    assert ("optimistic" in held_out["split_role"]) == (fitted_on == "all")


def test_metrics_json_is_strict_json_when_a_figure_has_no_value() -> None:
    """From a review: precision is NaN when no patch reaches the threshold, and metrics.json
    held a bare NaN, which JavaScript's JSON.parse (and jq) refuse."""
    import numpy as np

    from histodetect.evaluation.metrics import compute_metrics
    from histodetect.evaluation.report_folder import metrics_json

    metrics = compute_metrics(np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.2, 0.3]), 0.9)
    assert np.isnan(metrics["precision"])
    text = metrics_json({**metrics, "nested": [float("inf"), {"x": np.float32("nan")}]})
    saved = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert saved["precision"] is None and saved["nested"] == [None, {"x": None}]
    assert saved["auc"] == pytest.approx(metrics["auc"])


def test_split_option_takes_common_spellings(store: Path, model_file: Path, tmp_path: Path) -> None:
    # `--split val` (or Valid, validation, TEST) names the store's `valid` / `test` split.
    for given, stored in (("val", "valid"), ("TEST", "test")):
        m = evaluate(model_file, store, tmp_path / given, EvaluateOptions(split=given, n_boot=20))
        assert m["split"] == stored and m["n"] == 60


def test_run_split_is_rederived_and_cli_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_synthetic_store(tmp_path / "store", n=200)  # no valid split: training held out slides
    config = resolve_config(str(tmp_path / "store"), str(tmp_path / "run"), epochs=1, max_steps_per_epoch=2,
                            model="histonet", model_kwargs=tiny_model_kwargs("histonet"))  # fmt: skip
    fit(config, progress=False)
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    argv = ["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "store"), "--split", "valid",
            "--out", str(tmp_path / "report"), "--tta", "--bootstrap", "20"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "slide-grouped valid split" in out and "AUC" in out and "tumour" in out
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["n"] == info["n_valid"] and metrics["tta"] is True
    assert (tmp_path / "report" / "training_curves.png").is_file()


def test_calibrate_command_saves_into_the_model(
    store: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "calibrate",
        str(model_file),
        "--data",
        str(store),
        "--split",
        "valid",
        "--threshold",
        "0.35",
    ]
    assert main(argv) == 0
    assert "threshold 0.3500" in capsys.readouterr().out
    loaded = load_checkpoint(model_file)
    assert (
        loaded.spec.threshold == pytest.approx(0.35)
        and loaded.metadata["calibration"]["method"] == "0.35"
    )
    m = evaluate(
        model_file, store, model_file.parent / "r", EvaluateOptions(split="test", n_boot=20)
    )
    assert m["split_role"] == "held-out split" and m["threshold"] == pytest.approx(0.35)


def test_shift_intervals_use_the_bootstrap_asked_for(
    store: Path, model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a bad-input hunt: `--shift` intervals always drew 200 resamples, whatever
    `--bootstrap` said (the main interval followed it)."""
    from histodetect.evaluation import metrics

    drawn = []
    real = metrics.bootstrap_auc_ci

    def counted(labels: object, probs: object, n_boot: int = 1000, **kw: object) -> object:
        drawn.append(n_boot)
        return real(labels, probs, n_boot, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(metrics, "bootstrap_auc_ci", counted)
    opts = EvaluateOptions(split="test", n_boot=37, shifts=("blur", "jpeg"))
    evaluate(model_file, store, tmp_path / "rep", opts)
    assert drawn and set(drawn) == {37}, drawn


@pytest.mark.parametrize(
    "text, names",
    [(None, ()), ("blur", ("blur",)), ("blur, jpeg,blur", ("blur", "jpeg")), ("all", "ALL"),
     ("all,blur", "ALL"), ("", None), (",", None), ("all,fog", None)],
)  # fmt: skip
def test_shift_names(text: str | None, names: object) -> None:
    """From a bad-input hunt: `--shift all,blur` was "unknown shift all", and `--shift ''` ran
    no shift in silence while `--shift ,` was refused."""
    from histodetect.evaluation.shifts import SHIFTS, parse_shifts

    if names is None:
        with pytest.raises(HistodetectError, match="--shift"):
            parse_shifts(text)
    else:
        assert parse_shifts(text) == (tuple(SHIFTS) if names == "ALL" else names)


def test_a_report_on_another_store_holding_the_calibration_patches_says_so(
    store: Path, model_file: Path, tmp_path: Path
) -> None:
    """From a review: the calibration's patches were matched by store fingerprint only, so a
    report on a re-ingested copy split otherwise (the calibration's valid patches as its
    test split) was called held out. Patch ids are the SHA-1 of the pixels: the calibration
    keeps a sample of them, and a report on any store finds them."""
    torch.manual_seed(3)
    spec = ModelSpec("histonet", tiny_model_kwargs("histonet"))
    save_model(model_file, build_model(spec), spec, {})
    assert main(["calibrate", str(model_file), "--data", str(store), "--split", "valid"]) == 0
    swapped = tmp_path / "swapped"  # the same 240 patches; store's valid slides are its test
    make_synthetic_store(swapped, n=240, holdout=("test", "valid"))
    opts = EvaluateOptions(split="test", n_boot=20)
    role = evaluate(model_file, swapped, tmp_path / "r", opts)["split_role"]
    assert "about 60 of its 60 patches (matched by content" in role and "optimistic" in role
    held_out = evaluate(
        model_file, swapped, tmp_path / "v", EvaluateOptions(split="valid", n_boot=20)
    )
    assert "optimistic" not in held_out["split_role"]


def test_valid_of_a_store_without_one_says_why_only_a_run_can_use_it(
    model_file: Path, tmp_path: Path
) -> None:
    """From a README walk: `ensemble` prints `calibrate ENSEMBLE --split valid` as its next
    step, which on a store without a valid split failed with no word of why a run's own
    model.pt could use it."""
    plain = tmp_path / "plain"
    make_synthetic_store(plain, n=96)
    with pytest.raises(HistodetectError, match=r"re-drawn only for the model\.pt of a run folder"):
        evaluate(model_file, plain, tmp_path / "r", EvaluateOptions(split="valid", n_boot=20))
