"""Catalogue of bad inputs to train, calibrate, evaluate and predict: each is one sentence naming
the file or option, a non-zero exit (2 for a user error), no traceback, no run folder left
behind by a refused run, and never a broken model reported as good.

Add a case here for every defect found in how the model commands treat a bad input.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from histodetect.cli.main import main
from histodetect.data.store import not_a_store_reason
from histodetect.errors import HistodetectError
from histodetect.modelfiles import bundled_model_path
from histodetect.models import tiny_model_kwargs
from histodetect.models.checkpoint import load_checkpoint, save_model
from imagefiles import make_synthetic_store

TINY = ["--model", "histonet", "--model-kwargs", json.dumps(tiny_model_kwargs("histonet"))]
QUICK = ["--epochs", "1", "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cat") / "store"
    make_synthetic_store(path, n=160)
    return path


@pytest.fixture(scope="module")
def run(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (its model.pt is copied by cases that damage it)."""
    out = tmp_path_factory.mktemp("cat") / "run"
    assert main(["train", "--data", str(store), "--out", str(out), *TINY, *QUICK]) == 0
    return out


@dataclass(frozen=True)
class Case:
    """`build(tmp, store, run)` returns the command line; the error must hold `says`."""

    name: str
    build: Callable[[Path, Path, Path], list[str]]
    says: tuple[str, ...]
    code: int = 2


def _train(tmp: Path, store: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(store), "--out", str(tmp / "new_run"), *TINY, *QUICK, *extra]


def _tune(tmp: Path, store: Path, *extra: str) -> list[str]:
    """A fine-tuning command: the network comes from --init, not from TINY."""
    return ["train", "--data", str(store), "--out", str(tmp / "new_run"), *QUICK, *extra]


def _damaged_model(tmp: Path, run: Path) -> Path:
    """model.pt with bytes flipped inside a weight tensor (the file still unpickles)."""
    target = tmp / "damaged.pt"
    shutil.copy(run / "model.pt", target)
    data = bytearray(target.read_bytes())
    loaded = load_checkpoint(run / "model.pt")
    first = next(iter(loaded.model.state_dict().values())).numpy().tobytes()
    at = bytes(data).find(first[:16])
    assert at > 0
    data[at : at + 16] = bytes(16)
    target.write_bytes(bytes(data))
    return target


def _nan_model(tmp: Path, run: Path) -> Path:
    """A model whose weights are NaN, saved with a valid checksum (what a diverged run exports)."""
    loaded = load_checkpoint(run / "model.pt")
    with torch.no_grad():
        for parameter in loaded.model.parameters():
            parameter.fill_(float("nan"))
    target = tmp / "nan.pt"
    save_model(target, loaded.model, loaded.spec, loaded.metadata)
    return target


def _collapsed(tmp: Path, run: Path) -> Path:
    """Every weight zero: one logit (the output bias) for every patch. Calibration saved a
    temperature of 20 and a threshold of 1.0 (every patch normal) into it."""
    loaded = load_checkpoint(run / "model.pt")
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if not name.endswith("bias"):
                parameter.zero_()
    target = tmp / "collapsed.pt"
    save_model(target, loaded.model, loaded.spec, loaded.metadata)
    return target


def _negative_variance(tmp: Path, run: Path) -> Path:
    """Finite weights, but a BatchNorm variance below zero: NaN out of PyTorch itself, which
    export's parity check called "a bug in the export"."""
    loaded = load_checkpoint(run / "model.pt")
    for name, buffer in loaded.model.named_buffers():
        if name.endswith("running_var"):
            buffer.fill_(-1.0)
    target = tmp / "negvar.pt"
    save_model(target, loaded.model, loaded.spec, loaded.metadata)
    return target


def _nan_run(tmp: Path, run: Path) -> Path:
    """A run folder with no model.pt whose checkpoints hold NaN weights (a run that diverged
    and never exported): checkpoints were loaded unchecked, and export called it a bug."""
    copy = tmp / "nan_run"
    shutil.copytree(run, copy)
    (copy / "model.pt").unlink()
    for ckpt in (copy / "checkpoints").glob("*.ckpt"):
        payload = torch.load(ckpt, map_location="cpu", weights_only=True)
        for value in payload["state_dict"].values():
            if value.is_floating_point():
                value.fill_(float("nan"))
        torch.save(payload, ckpt)
    return copy


def _other_model(tmp: Path, run: Path) -> Path:
    """A second model: the run's weights moved a little (an ensemble refuses one model twice)."""
    loaded = load_checkpoint(run / "model.pt")
    with torch.no_grad():
        for parameter in loaded.model.parameters():
            parameter.add_(1e-3)
    target = tmp / "other.pt"
    save_model(target, loaded.model, loaded.spec, loaded.metadata)
    return target


def _other_stats(tmp: Path, run: Path) -> Path:
    """Another seed's model on a store without a valid split: its mean and std come from other
    training patches (from a README walk: the message said "patch size, crop or normalisation")."""
    loaded = load_checkpoint(_other_model(tmp, run))
    mean = tuple(m + 0.003 for m in loaded.spec.mean)
    save_model(tmp / "seed1.pt", loaded.model, loaded.spec.replace(mean=mean), loaded.metadata)
    return tmp / "seed1.pt"


def _nested_ensemble(tmp: Path, run: Path) -> list[str]:
    """An ensemble given as a member: it was written, and then no command could load it."""
    inner = tmp / "inner.pt"
    assert main(["ensemble", str(run), str(_other_model(tmp, run)), "--out", str(inner)]) == 0
    return ["ensemble", str(inner), str(run), "--out", str(tmp / "e.pt")]


def _one_class_store(tmp: Path, store: Path) -> Path:
    from histodetect.data.store import open_store

    s = open_store(store)
    keep = np.flatnonzero(s.manifest.labels == 1)
    folder = tmp / "ones"
    for i in keep[:40]:
        path = folder / str(s.manifest.splits[i] or "train") / "1" / f"p{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(s.read([int(i)])[0]).save(path)
    assert main(["ingest", str(folder), "--out", str(tmp / "ones_store"), "--no-progress"]) == 0
    return tmp / "ones_store"


CASES = [
    Case("lr zero", lambda t, s, r: _train(t, s, "--lr", "0"), ("--lr",)),
    Case("lr negative", lambda t, s, r: _train(t, s, "--lr", "-1"), ("--lr",)),
    Case("lr nan", lambda t, s, r: _train(t, s, "--lr", "nan"), ("--lr",)),
    Case("lr absurd", lambda t, s, r: _train(t, s, "--lr", "1e9"), ("--lr",)),
    Case("batch absurd", lambda t, s, r: _train(t, s, "--batch-size", "10000000"), ("--batch-size",)),
    Case("batch above split", lambda t, s, r: _train(t, s, "--batch-size", "5000"), ("--batch-size", "training split")),
    Case("epochs zero", lambda t, s, r: _train(t, s, "--epochs", "0"), ("--epochs",)),
    Case("weight decay nan", lambda t, s, r: _train(t, s, "--weight-decay", "nan"), ("--weight-decay",)),
    Case("model kwargs list", lambda t, s, r: _train(t, s, "--model-kwargs", "[1, 2]"), ("--model-kwargs", "JSON object")),
    Case("model kwargs bad json", lambda t, s, r: _train(t, s, "--model-kwargs", "{oops"), ("--model-kwargs",)),
    Case("augment strength of an augmentation left off", lambda t, s, r: _train(t, s, "--augment", "d4,blur_sigma=1.0"), ("--augment", "blur_sigma has no effect without blur", "add blur")),
    Case("augment strength out of range", lambda t, s, r: _train(t, s, "--augment", "d4,blur,blur_sigma=9"), ("--augment", "blur_sigma must lie in [0, 5.0]")),
    Case("mixup strength without mixup", lambda t, s, r: _train(t, s, "--augment", "d4,mixup_alpha=0.2"), ("--augment", "mixup_alpha has no effect without mixup", "add mixup")),
    Case("mixup alpha of zero", lambda t, s, r: _train(t, s, "--augment", "d4,mixup,mixup_alpha=0"), ("--augment", "mixup_alpha must lie in (0, 10.0]")),
    Case("distill weight without a teacher", lambda t, s, r: _train(t, s, "--distill-weight", "0.5"), ("--distill-weight", "without --teacher")),
    Case("teacher that does not exist", lambda t, s, r: _train(t, s, "--teacher", str(t / "nope")), ("--teacher", "nope", "does not exist")),
    Case("distill weight of zero", lambda t, s, r: _train(t, s, "--teacher", str(r), "--distill-weight", "0"), ("--distill-weight must lie in (0, 1]",)),
    Case("damaged teacher", lambda t, s, r: _train(t, s, "--teacher", str(_damaged_model(t, r))), ("damaged.pt", "checksum")),
    Case("init that does not exist", lambda t, s, r: _tune(t, s, "--init", str(t / "nope")), ("--init", "nope", "does not exist")),
    Case("init of another network", lambda t, s, r: _tune(t, s, "--init", str(r), "--model", "seed_cnn"), ("--model seed_cnn differs from --init", "histonet", "leave --model out")),
    Case("init beside a preset of another network", lambda t, s, r: _tune(t, s, "--init", str(r), "--preset", "seed"), ("--preset seed (its seed_cnn) differs from --init", "leave --preset seed out")),
    Case("init with another crop", lambda t, s, r: _tune(t, s, "--init", str(r), "--crop", "32"), ("--crop 32 differs from --init",)),
    Case("init with wider layers", lambda t, s, r: _tune(t, s, "--init", str(r), "--model-kwargs", json.dumps({"stage_widths": [4, 16]})), ("--model-kwargs", "weights of --init", "do not fit", "size mismatch", "leave out the options that change its layers")),
    Case("damaged init", lambda t, s, r: _tune(t, s, "--init", str(_damaged_model(t, r))), ("--init", "damaged.pt", "checksum")),
    Case("init an onnx file", lambda t, s, r: _tune(t, s, "--init", str(_touch(t / "m.onnx"))), ("--init", "ONNX model", "model.pt")),
    Case("resume with init", lambda t, s, r: ["train", "--resume", str(r), "--init", str(r)], ("--init would be ignored",)),
    Case("gpu without gpu", lambda t, s, r: _train(t, s, "--accelerator", "gpu"), ("--accelerator gpu",)),
    Case("one-class training data", lambda t, s, r: _train(t, _one_class_store(t, s)), ("0 normal", "both classes")),
    Case("resume a finished run", lambda t, s, r: ["train", "--resume", str(r)], ("already finished",)),
    Case("resume a non-run", lambda t, s, r: ["train", "--resume", str(t)], ("not a training run",)),
    Case("resume with a recipe option", lambda t, s, r: ["train", "--resume", str(r), "--epochs", "30", "--teacher", str(r)], ("--resume", "--epochs, --teacher would be ignored", "start a new run")),
    Case("damaged weights", lambda t, s, r: ["predict", str(s), "--model", str(_damaged_model(t, r)), "--out", str(t / "p.csv"), "--no-progress"], ("damaged.pt", "checksum")),
    Case("nan weights", lambda t, s, r: ["evaluate", str(_nan_model(t, r)), "--data", str(s), "--out", str(t / "rep")], ("nan.pt", "non-finite")),
    Case("collapsed model, calibrate", lambda t, s, r: ["calibrate", str(_collapsed(t, r)), "--data", str(s), "--split", "all"], ("same probability", "collapsed")),
    Case("negative variance, export", lambda t, s, r: ["export", str(_negative_variance(t, r)), "--out", str(t / "m.onnx")], ("non-finite probabilities in PyTorch itself",)),
    Case("nan checkpoint, export", lambda t, s, r: ["export", str(_nan_run(t, r)), "--out", str(t / "m.onnx")], ("nan_run", ".ckpt", "non-finite")),
    Case("nan checkpoint, evaluate", lambda t, s, r: ["evaluate", str(_nan_run(t, r)), "--data", str(s), "--out", str(t / "rep")], ("nan_run", ".ckpt", "non-finite")),
    Case("evaluate cuda without gpu", lambda t, s, r: ["evaluate", str(r), "--data", str(s), "--out", str(t / "rep"), "--device", "cuda"], ("--device cuda",)),
    Case("calibrate cuda without gpu", lambda t, s, r: ["calibrate", str(r), "--data", str(s), "--device", "cuda"], ("--device cuda",)),
    Case("calibrate bad threshold", lambda t, s, r: ["calibrate", str(r), "--data", str(s), "--threshold", "sensitivity=abc"], ("--threshold", "sensitivity=abc")),
    Case("calibrate threshold out of range", lambda t, s, r: ["calibrate", str(r), "--data", str(s), "--threshold", "1.5"], ("--threshold",)),
    Case("evaluate out is a file", lambda t, s, r: ["evaluate", str(r), "--data", str(s), "--out", str(_touch(t / "f.txt"))], ("f.txt", "is a file")),
    Case("evaluate one-class split", lambda t, s, r: ["evaluate", str(r), "--data", str(_one_class_store(t, s)), "--split", "all", "--out", str(t / "rep")], ("both classes",)),
    Case("evaluate unknown split", lambda t, s, r: ["evaluate", str(r), "--data", str(s), "--split", "nope", "--out", str(t / "rep")], ("nope", "--split all")),
    Case("evaluate threshold without calibrate-on", lambda t, s, r: ["evaluate", str(r), "--data", str(s), "--out", str(t / "rep"), "--threshold", "0.9"], ("--threshold 0.9", "--calibrate-on")),
    Case("evaluate batch size negative", lambda t, s, r: ["evaluate", str(r), "--data", str(s), "--out", str(t / "rep"), "--batch-size", "-1"], ("--batch-size must be at least 1",)),
    Case("evaluate bootstrap zero", lambda t, s, r: ["evaluate", str(r), "--data", str(s), "--out", str(t / "rep"), "--bootstrap", "0"], ("--bootstrap must be at least 1",)),
    Case("calibrate batch size negative", lambda t, s, r: ["calibrate", str(r), "--data", str(s), "--batch-size", "-2"], ("--batch-size must be at least 1",)),
    Case("store without its pixel file", lambda t, s, r: ["predict", str(_without_pixels(t, s)), "--model", str(r), "--out", str(t / "p.csv"), "--no-progress"], ("pixels.u8 is missing", "ingest")),
    Case("truncated model file", lambda t, s, r: ["predict", str(s), "--model", str(_truncated(t, r)), "--out", str(t / "p.csv"), "--no-progress"], ("trunc.pt", "cut short")),
    Case("text file named .pt", lambda t, s, r: ["predict", str(s), "--model", str(_write(t / "notes.pt", b"hello world\n" * 9)), "--out", str(t / "p.csv"), "--no-progress"], ("notes.pt", "not a PyTorch file")),
    # from a bad-input hunt: a file starting "x" reads as a pickle opcode torch does not allow
    Case("python source as a model", lambda t, s, r: ["predict", str(s), "--model", str(_write(t / "mk.py", b"x = 1\n")), "--out", str(t / "p.csv"), "--no-progress"], ("mk.py", "not a PyTorch file")),
    Case("model file of Python objects", lambda t, s, r: ["predict", str(s), "--model", str(_pickled_objects(t / "objects.pt")), "--out", str(t / "p.csv"), "--no-progress"], ("objects.pt", "Python objects besides tensors", "could run code")),
    Case("checkpoint of Python objects", lambda t, s, r: ["predict", str(s), "--model", str(_pickled_objects(t / "objects.ckpt")), "--out", str(t / "p.csv"), "--no-progress"], ("objects.ckpt", "Python objects besides tensors")),
    Case("negative workers", lambda t, s, r: ["predict", str(s), "--model", str(r), "--out", str(t / "p.csv"), "--workers", "-3"], ("--workers", "negative")),
    Case("predict out deep inside a store", lambda t, s, r: ["predict", str(s), "--model", str(r), "--out", str(_store_copy(t, s) / "sub" / "p.csv"), "--no-progress"], ("lies inside the patch store", "write the predictions elsewhere")),
    Case("explain out inside a store", lambda t, s, r: ["explain", str(s), "--model", str(r), "--out", str(_store_copy(t, s) / "expl"), "--no-progress"], ("lies inside the patch store", "write the explanations elsewhere")),
    Case("evaluate out inside a store", lambda t, s, r: ["evaluate", str(r), "--data", str(s), "--out", str(_store_copy(t, s) / "rep")], ("lies inside the patch store", "write the report elsewhere")),
    Case("evaluate out is the store", lambda t, s, r: ["evaluate", str(r), "--data", str(s), "--out", str(_store_copy(t, s)), "--overwrite"], ("is the patch store",)),
    # from a bad-input hunt: '' became '.', refused as ". is a folder"
    Case("predict empty --out", lambda t, s, r: ["predict", str(s), "--model", str(r), "--out", ""], ("--out", "an empty path")),
    Case("train empty --init", lambda t, s, r: ["train", "--data", str(s), "--out", str(t / "run"), "--init", ""], ("--init is empty",)),
    Case("slide empty input", lambda t, s, r: ["slide", "", "--out", str(t / "o")], ("argument SLIDE", "an empty path")),
    Case("evaluate unknown shift", lambda t, s, r: ["evaluate", str(r), "--data", str(s), "--shift", "fog", "--out", str(t / "rep")], ("--shift", "fog")),
]  # fmt: skip


def _store_copy(tmp: Path, store: Path) -> Path:
    """A copy of the store (a case that wrote into it would not touch the shared one). Before,
    explain, evaluate and slide wrote their folders into a store, and then `ingest --overwrite`
    refused to replace it; predict checked only the CSV's own folder."""
    copy = tmp / "store_copy"
    shutil.copytree(store, copy)
    return copy


def _without_pixels(tmp: Path, store: Path) -> Path:
    """A store copy whose pixels.u8 is gone (found reported as "expected ... found -1")."""
    copy = tmp / "no_pixels"
    shutil.copytree(store, copy)
    (copy / "pixels.u8").unlink()
    return copy


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class _Payload:
    """An object torch.save pickles by class: loading it unchecked would run its class's code.
    Before, a .ckpt that weights_only=True refused was loaded again with weights_only=False."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("a pickled object's code ran",))


def _pickled_objects(path: Path) -> Path:
    torch.save({"state_dict": {}, "payload": _Payload()}, path)
    return path


def _truncated(tmp: Path, run: Path) -> Path:
    """The first half of a model.pt (a cut-off copy or download)."""
    data = (run / "model.pt").read_bytes()
    (tmp / "trunc.pt").write_bytes(data[: len(data) // 2])
    return tmp / "trunc.pt"


def _altered(tmp: Path, run: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """The run's model.pt with its payload edited: a file torch reads but histodetect did not
    write as it is (found by a bad-input hunt: each gave an internal error before)."""
    payload = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    edit(payload)
    torch.save(payload, tmp / "altered.pt")
    return tmp / "altered.pt"


def _reshaped(payload: dict[str, Any]) -> None:
    """One weight of another shape, the checksum dropped (so it is the shape that is refused)."""
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = torch.zeros(3, 3)
    del payload["weights_sha256"]


def _predict(tmp: Path, store: Path, model: Path) -> list[str]:
    out = str(tmp / "p.csv")
    return ["predict", str(store), "--model", str(model), "--out", out, "--no-progress"]


ALTERED = [
    ("no model spec", lambda p: p.pop("model_spec"), ("altered.pt", "model spec is missing")),
    ("no weights", lambda p: p.pop("state_dict"), ("altered.pt", "weights are missing")),
    ("weights not tensors", lambda p: p.update(state_dict=dict.fromkeys(p["state_dict"], 1)), ("altered.pt", "not tensors")),
    ("metadata a list", lambda p: p.update(metadata=[1]), ("altered.pt", "metadata is not a mapping")),
    ("spec threshold out of range", lambda p: p["model_spec"].update(threshold=2.0), ("altered.pt", "invalid model spec", "threshold")),
    ("spec of an unknown network", lambda p: p["model_spec"].update(model_name="nosuch"), ("altered.pt", "nosuch")),
    ("weights of another shape", _reshaped, ("altered.pt", "does not match model", "size mismatch", "export it again")),
]  # fmt: skip
CASES += [
    Case(f"model file: {name}", lambda t, s, r, e=edit: _predict(t, s, _altered(t, r, e)), says)
    for name, edit, says in ALTERED
]
CASES += [  # a negative seed was an internal error in inspect (numpy refuses it)
    Case("inspect negative seed", lambda t, s, r: ["inspect", str(s), "--out", str(t / "io"), "--seed=-1"], ("--seed", "-1 is not a seed")),
    Case("train seed beyond 32 bits", lambda t, s, r: _train(t, s, "--seed", str(2**32)), ("--seed", "is not a seed")),
    Case("evaluate negative shift seed", lambda t, s, r: ["evaluate", str(r), "--data", str(s), "--out", str(t / "rep"), "--shift-seed=-2"], ("--shift-seed", "not a seed")),
]  # fmt: skip
CASES += [
    Case("ensemble of one model twice", lambda t, s, r: ["ensemble", str(r), str(r / "model.pt"), "--out", str(t / "e.pt")], ("model.pt has the same weights as", "give different models")),
    Case("ensemble of seeds with other statistics", lambda t, s, r: ["ensemble", str(r), str(_other_stats(t, r)), "--out", str(t / "e.pt")], ("seed1.pt normalises its input with another mean", "valid split")),
    Case("ensemble of an ensemble", lambda t, s, r: _nested_ensemble(t, r), ("inner.pt is itself an ensemble",)),
    Case("ensemble out not a .pt", lambda t, s, r: ["ensemble", str(r), str(_other_model(t, r)), "--out", str(t / "e.onnx")], ("--out", "e.onnx must end in .pt")),
    Case("ensemble out is one of its models", lambda t, s, r: ["ensemble", str(r), str(_other_model(t, r)), "--out", str(t / "other.pt"), "--overwrite"], ("other.pt is one of the models",)),
]  # fmt: skip
CASES.append(  # calibrate rewrote the model file installed with the package
    Case("calibrate the bundled model", lambda t, s, r: ["calibrate", str(bundled_model_path()), "--data", str(s), "--split", "all"], ("installed with histodetect", "calibrate the copy"))
)  # fmt: skip
CASES.append(
    Case("ensemble member with list metadata", lambda t, s, r: ["ensemble", str(r), str(_altered(t, r, lambda p: p.update(metadata=[1]))), "--out", str(t / "e.pt")], ("altered.pt", "metadata is not a mapping"))
)  # fmt: skip


def _touch(path: Path) -> Path:
    path.write_text("not a folder\n")
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_model_input_is_one_clear_sentence(
    case: Case, store: Path, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = case.build(tmp_path, store, run)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects a malformed option value itself (exit 2)
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    err = captured.err
    assert code == case.code, err
    assert "code ran" not in captured.out, "a file's pickled objects must never be run"
    assert "Traceback" not in err
    assert "internal error" not in err, err
    for fragment in case.says:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "new_run").exists(), "a refused run must leave no run folder"
    assert not (tmp_path / "rep").exists(), "a refused evaluation must leave no report folder"
    if (tmp_path / "store_copy").exists():
        assert not_a_store_reason(tmp_path / "store_copy") is None, "the store must be untouched"


def test_diverged_training_stops_with_a_sentence_and_exports_nothing(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from histodetect.training.module import PatchClassifier

    real_step = PatchClassifier.training_step

    def exploding_step(self: PatchClassifier, batch: object, batch_idx: int) -> torch.Tensor:
        if self.global_step >= 2:  # what an lr of 1e9 does a few steps in
            with torch.no_grad():
                for parameter in self.model.parameters():
                    parameter.fill_(float("inf"))
        return real_step(self, batch, batch_idx)  # type: ignore[arg-type]

    monkeypatch.setattr(PatchClassifier, "training_step", exploding_step)
    out = tmp_path / "diverged"
    code = main(["train", "--data", str(store), "--out", str(out), *TINY, *QUICK])
    err = capsys.readouterr().err
    assert code == 2 and "diverged" in err and "--lr" in err, err
    assert "Traceback" not in err
    assert not (out / "model.pt").exists() and not (out / "summary.json").exists()


def test_a_run_that_failed_before_its_first_checkpoint_can_be_rerun(
    store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "aborted"
    (out / "logs").mkdir(parents=True)
    (out / "tensorboard").mkdir()
    # what a run killed before its first checkpoint left, beside a user's own files
    assert main(["train", "--data", str(store), "--out", str(tmp_path / "ref"), *TINY, *QUICK]) == 0
    shutil.copy(tmp_path / "ref" / "config.json", out / "config.json")
    (out / "logs" / "metrics.csv").write_text("epoch,step\n0,9\n")
    (out / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"\0")
    (out / "notes.txt").write_text("mine\n")
    (out / "logs" / "experiment-2023.txt").write_text("mine too\n")
    assert main(["train", "--data", str(store), "--out", str(out), *TINY, *QUICK]) == 0
    assert (out / "model.pt").is_file() and (out / "notes.txt").read_text() == "mine\n"
    assert (out / "logs" / "experiment-2023.txt").read_text() == "mine too\n"
    assert not (out / "tensorboard" / "events.out.tfevents.1.host").exists()


def test_a_folder_with_a_config_json_of_its_own_is_not_cleared(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From a review: any config.json made --out count as a failed run, and its logs/,
    tensorboard/ and checkpoints/ folders were deleted whole."""
    out = tmp_path / "project"
    (out / "logs").mkdir(parents=True)
    (out / "config.json").write_text('{"my": "settings"}\n')
    (out / "logs" / "experiment-2023.txt").write_text("mine\n")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert main(["train", "--data", str(store), "--out", str(out), *TINY, *QUICK]) == 2
    err = capsys.readouterr().err
    assert "holds a config.json that is not a histodetect training config" in err, err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_resume_uses_the_folder_given_not_the_saved_path(
    store: Path, run: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    (moved / "summary.json").unlink()  # as if it had been killed before the end
    config = json.loads((moved / "config.json").read_text())
    config["data"] = "relative/store/that/is/not/here"
    (moved / "config.json").write_text(json.dumps(config))
    before = (run / "model.pt").read_bytes()
    assert main(["train", "--resume", str(moved), "--no-progress"]) == 0
    assert (moved / "summary.json").is_file()
    assert (run / "model.pt").read_bytes() == before, "the original run must be untouched"


def test_resume_builds_the_network_in_the_checkpoint_not_todays_default(
    run: Path, tmp_path: Path
) -> None:
    """config.json keeps only the model options given; a run begun before a builder default
    changed (histocnn gained a fourth block) resumes the network its checkpoint holds. Found
    when that default changed: resuming raised a state_dict RuntimeError."""
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    (moved / "summary.json").unlink()  # as if it had been killed before the end
    config = json.loads((moved / "config.json").read_text())
    config["model_kwargs"] = {}  # the defaults of today differ from the tiny network trained
    (moved / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(moved), "--no-progress"]) == 0
    assert load_checkpoint(moved).spec.model_kwargs == load_checkpoint(run).spec.model_kwargs


def test_nan_probabilities_never_become_a_score() -> None:
    from histodetect.errors import HistodetectError
    from histodetect.evaluation.metrics import compute_auc, compute_metrics

    labels = np.array([0, 1, 0, 1])
    probs = np.array([0.1, np.nan, 0.2, 0.9])
    with pytest.raises(HistodetectError, match="NaN"):
        compute_auc(labels, probs)
    with pytest.raises(HistodetectError, match="NaN"):
        compute_metrics(labels, probs, 0.5)


@pytest.mark.parametrize("command", ["predict", "evaluate", "ensemble", "calibrate"])
def test_read_only_out_is_one_sentence(
    command: str, store: Path, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    if command == "calibrate":  # calibration rewrites the model file in its read-only folder
        shutil.copy(run / "model.pt", folder / "model.pt")
    before = sorted(p.name for p in folder.iterdir())
    chattr = shutil.which("chattr")
    if os.geteuid() != 0:
        folder.chmod(0o555)
    elif not chattr or subprocess.run([chattr, "+i", str(folder)]).returncode != 0:
        pytest.skip("cannot make a folder read-only here (root without chattr +i)")
    try:
        argv = {
            "predict": ["predict", str(store), "--model", str(run), "--out", str(folder / "p.csv"), "--no-progress"],
            "evaluate": ["evaluate", str(run), "--data", str(store), "--out", str(folder / "report")],
            "ensemble": ["ensemble", str(run), str(_other_model(tmp_path, run)), "--out", str(folder / "e.pt")],
            "calibrate": ["calibrate", str(folder / "model.pt"), "--data", str(store), "--split", "all"],
        }[command]  # fmt: skip
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and "internal error" not in err, err
        assert str(folder) in err and len(err.strip().splitlines()) == 1, err
        assert sorted(p.name for p in folder.iterdir()) == before
    finally:
        if os.geteuid() == 0 and chattr:
            subprocess.run([chattr, "-i", str(folder)], check=False)
        folder.chmod(0o755)


def test_full_range_int8_graph_is_refused_on_a_cpu_without_vnni(
    run: Path,
    store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """int8 files exported before weights were kept to 7 bits gave probabilities off by up to
    0.45 on an AVX2 CPU (VPMADDUBSW saturates without VNNI), with no word: now refused there."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from histodetect.inference.predictor import Predictor

    new = tmp_path / "new.onnx"
    argv = ["export", str(run), "--out", str(new), "--int8-calibration", str(store)]
    assert main(argv) == 0
    graph = onnx.load(str(new))
    # an export from before 7-bit weights: no int8_weights key, and no content seal either
    kept = [p for p in graph.metadata_props if p.key not in ("int8_weights", "content_sha256")]
    assert len(kept) == len(graph.metadata_props) - 2, (
        "a new int8 export says its weights are 7-bit, and is sealed"
    )
    for prop in kept:
        if prop.key == "histodetect_format_version":
            prop.value = "1"  # before the seal came format version 2
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(graph, str(old))
    monkeypatch.setenv("HISTODETECT_CPU_VNNI", "0")
    Predictor(new, device="cpu")  # 7-bit weights: right on every CPU
    code = main(["predict", str(store), "--model", str(old), "--out", str(tmp_path / "p.csv"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and not (tmp_path / "p.csv").exists(), err
    assert "old.onnx" in err and "no VNNI" in err and "export it again" in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    monkeypatch.setenv("HISTODETECT_CPU_VNNI", "1")
    Predictor(old, device="cpu")  # VNNI computes full-range weights exactly


@pytest.mark.parametrize("where", ["weights", "metadata", "seal key", "seal value"])
def test_an_onnx_file_changed_after_export_is_refused_not_scored(
    run: Path, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """From a review: 64 KB of one weight tensor overwritten in an exported model.onnx, and
    predict scored with it (exit 0; probabilities 0.14 -> 0.71); a model.pt has its weights'
    SHA-256, an .onnx file had nothing. Export now seals the file with its own SHA-256."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from histodetect.inference.predictor import Predictor

    good = tmp_path / "good.onnx"
    assert main(["export", str(run), "--out", str(good)]) == 0
    Predictor(good, device="cpu")  # sealed and intact: loads
    data = bytearray(good.read_bytes())
    # inside the largest weight tensor's bytes: the middle of the file could land on a protobuf
    # tag instead, and the file then failed to parse at all (another message: CI, 8 Dec)
    biggest = max(onnx.load(str(good)).graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    in_weights = data.index(biggest[:256]) + len(biggest) // 2
    edits = {
        "weights": (in_weights, bytes(b ^ 0xFF for b in biggest[len(biggest) // 2 :][:4])),
        "metadata": (data.index(b'"threshold"'), b'"thr'[::-1]),  # in the spec JSON
        # the seal's own entry: its key, or its value made unreadable (the file then looked
        # like an export from before the seal, and loaded unchecked)
        "seal key": (data.index(b"content_sha256") + 13, b"X"),
        "seal value": (data.index(b"content_sha256") + 16, b"zz"),
    }
    at, new = edits[where]
    data[at : at + len(new)] = new
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(bytes(data))
    capsys.readouterr()
    argv = ["predict", str(store), "--model", str(damaged), "--out", str(tmp_path / "p.csv")]
    code = main([*argv, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not (tmp_path / "p.csv").exists(), err
    assert "damaged.onnx is damaged" in err and "export it again" in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize(
    "env",
    [
        "HISTODETECT_CPU_BF16",
        "HISTODETECT_CPU_VNNI",
        "HISTODETECT_CPU_NHWC",
        "HISTODETECT_CPU_ONNXRUNTIME",
    ],
)
def test_a_cpu_override_that_is_not_0_or_1_is_refused(
    env: str,
    run: Path,
    store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """HISTODETECT_CPU_BF16=yes (or any value but 0/1) was silently ignored and the CPU's flags
    used instead: the user thought they had forced a path and had not."""
    from histodetect import hardware
    from histodetect.errors import HistodetectError
    from histodetect.inference.backends import auto

    monkeypatch.setenv(env, "yes")
    checks = {
        "HISTODETECT_CPU_ONNXRUNTIME": auto.onnxruntime_forced,
        "HISTODETECT_CPU_BF16": hardware.cpu_has_native_bf16,
        "HISTODETECT_CPU_VNNI": hardware.cpu_has_vnni,
        "HISTODETECT_CPU_NHWC": lambda: hardware.use_channels_last("cpu", "32-true"),
    }
    with pytest.raises(HistodetectError, match=f"{env}='yes' is not 0 or 1"):
        checks[env]()
    if env != "HISTODETECT_CPU_VNNI":  # VNNI is read for int8 ONNX files only
        out = tmp_path / "p.csv"
        argv = ["predict", str(store), "--model", str(run), "--out", str(out), "--no-progress"]
        reads_auto = env in ("HISTODETECT_CPU_BF16", "HISTODETECT_CPU_ONNXRUNTIME")
        precision = "auto" if reads_auto else "32-true"  # where each is read
        code = main([*argv, "--precision", precision])
        err = capsys.readouterr().err.strip()
        assert code == 2 and not out.exists(), err
        assert env in err and "set it to 0 or 1" in err, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_convolutions_onednn_trains_wrong_on_nhwc_keep_the_default_layout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On an AVX2 CPU (AMD EPYC, torch 2.13.0), oneDNN's channels_last weight gradient of a
    1x1 convolution with stride 2 and 2-7 input channels came out wrong (relative error
    0.3-4.7), hung or segfaulted: a model with such a layer (the test suite's tiny histonet
    shortcut, 4 -> 8) trains in fp32 in the default layout, as does one with grouped
    convolutions (not measured)."""
    from histodetect import hardware
    from histodetect.models import ModelSpec, build_model

    monkeypatch.delenv(hardware.ENV_CPU_NHWC, raising=False)
    monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda: frozenset({"avx2", "fma"}))

    def trains_nhwc(model: torch.nn.Module) -> bool:
        return hardware.use_channels_last("cpu", "32-true", training=True, model=model)

    tiny_histonet = build_model(ModelSpec("histonet", tiny_model_kwargs("histonet")))
    assert not hardware.nhwc_fp32_training_is_safe(tiny_histonet) and not trains_nhwc(tiny_histonet)
    for in_channels, stride, safe in [(4, 2, False), (7, 2, False), (8, 2, True), (4, 1, True)]:
        conv = torch.nn.Conv2d(in_channels, 8, 1, stride=stride)
        assert hardware.nhwc_fp32_training_is_safe(conv) == safe, (in_channels, stride)
    assert not hardware.nhwc_fp32_training_is_safe(torch.nn.Conv2d(8, 8, 3, groups=8))
    monkeypatch.setenv(hardware.ENV_CPU_NHWC, "1")  # forcing the layout does not skip the check
    assert not trains_nhwc(tiny_histonet)
    histocnn = build_model(ModelSpec("histocnn", tiny_model_kwargs("histocnn")))
    assert trains_nhwc(histocnn)


def test_strided_1x1_convolutions_under_16_channels_keep_the_default_layout_on_avx512(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On an AMD EPYC Zen 4 (AVX-512, torch 2.13.0) the channels_last fp32 backward of a 1x1
    stride-2 convolution with 2-15 input channels segfaulted (the test suite's gradient check
    on a histonet with an 8-channel shortcut killed `make test`); a SIMD register there holds
    16 fp32 values, so 8-15 input channels, safe on AVX2, are refused too, even when
    HISTODETECT_CPU_NHWC=1 forces the layout."""
    from histodetect import hardware
    from histodetect.models import ModelSpec, build_model

    monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda: frozenset({"avx2", "avx512f"}))
    for in_channels, stride, safe in [(8, 2, False), (15, 2, False), (16, 2, True), (8, 1, True)]:
        conv = torch.nn.Conv2d(in_channels, 8, 1, stride=stride)
        assert hardware.nhwc_fp32_training_is_safe(conv) == safe, (in_channels, stride)
    model = build_model(
        ModelSpec("histonet", {"stage_widths": (8, 16), "blocks_per_stage": (1, 1)})
    )
    monkeypatch.setenv(hardware.ENV_CPU_NHWC, "1")
    assert not hardware.use_channels_last("cpu", "32-true", training=True, model=model)
    monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda: frozenset({"avx2"}))
    assert hardware.use_channels_last("cpu", "32-true", training=True, model=model)


def test_calibrating_through_a_link_calibrates_its_file_and_keeps_the_link(
    store: Path, run: Path, tmp_path: Path
) -> None:
    """It replaced the link with a calibrated copy and left the file it pointed to as it was."""
    target = tmp_path / "models" / "model.pt"
    target.parent.mkdir()
    shutil.copy(run / "model.pt", target)
    link = tmp_path / "current.pt"
    link.symlink_to(target)
    before = load_checkpoint(target).spec
    assert main(["calibrate", str(link), "--data", str(store), "--split", "all"]) == 0
    assert link.is_symlink() and link.resolve() == target.resolve()
    after = load_checkpoint(target).spec
    assert (after.temperature, after.threshold) != (before.temperature, before.threshold)
    assert load_checkpoint(target).metadata["calibration"]["split"] == "all"


@pytest.mark.parametrize(
    "name, text, says",
    [("config.json", "{", "config.json is damaged"), ("config.json", "[1]", "not a JSON object"),
     ("run_info.json", "{", "run_info.json is damaged"),
     ("run_info.json", "{}", "changed since this run began")],
)  # fmt: skip
def test_resume_of_a_run_with_a_damaged_json_file_is_one_sentence(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, says: str
) -> None:
    """From a review: json.loads and info["store_fingerprint"] gave internal errors ("a bug")."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for finished in ("summary.json", "model.pt"):  # an unfinished run, so it may be resumed
        (copy / finished).unlink()
    (copy / name).write_text(text)
    assert main(["train", "--resume", str(copy), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert says in err and "internal error" not in err and len(err.strip().splitlines()) == 1, err


def test_a_second_training_into_one_run_folder_is_refused(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From a review: nothing locked a run folder, so two `--resume` of one run (a requeue
    while the first still ran) took turns overwriting each other's checkpoints."""
    from imagefiles import holding_lock_elsewhere

    out = tmp_path / "busy"
    with holding_lock_elsewhere(out):
        assert main(["train", "--data", str(store), "--out", str(out), *TINY, *QUICK]) == 2
    err = capsys.readouterr().err
    assert f"another histodetect process is writing {out}" in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "env, primary",
    [({}, True), ({"RANK": "0", "LOCAL_RANK": "0"}, True), ({"SLURM_PROCID": "1"}, False),
     ({"RANK": "3", "LOCAL_RANK": "0"}, False), ({"GROUP_RANK": "1", "LOCAL_RANK": "0"}, False),
     ({"LOCAL_RANK": "1"}, False)],
)  # fmt: skip
def test_only_the_global_rank_0_process_prepares_and_locks_the_run_folder(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], primary: bool
) -> None:
    """From a review: LOCAL_RANK / NODE_RANK alone took every srun task and each torchrun
    node's first process for rank 0, and with the run-folder lock they refused one another."""
    from histodetect.training.devices import RANK_VARIABLES, is_primary_process

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_primary_process() is primary


def test_resume_of_the_current_folder_names_the_run_not_the_option(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a review: the run-folder lock refused `train --resume .` with "--out . names no
    new folder"; the run's own state is what decides."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    monkeypatch.chdir(copy)
    assert main(["train", "--resume", ".", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "has already finished" in err and "names no new folder" not in err, err


def test_a_failed_start_of_an_older_version_can_be_started_again(
    store: Path, run: Path, tmp_path: Path
) -> None:
    """From a review: a config.json without the keys added since (init, teacher,
    distill_weight) was refused as "not a histodetect training config"."""
    out = tmp_path / "old_start"
    out.mkdir()
    saved = json.loads((run / "config.json").read_text())
    for newer in ("init", "teacher", "distill_weight"):
        saved.pop(newer)
    (out / "config.json").write_text(json.dumps(saved))
    assert main(["train", "--data", str(store), "--out", str(out), *TINY, *QUICK]) == 0
    assert (out / "model.pt").is_file()


def test_an_out_beside_a_store_reached_through_dotdot_is_not_inside_it(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a review: `absolute()` kept `..`, so from inside a store `--out ../report` had the
    store among its parents and was refused."""
    from histodetect.data.store import check_not_in_store

    monkeypatch.chdir(store)
    check_not_in_store(Path("../report"), "report")  # beside the store: no error
    with pytest.raises(HistodetectError, match="lies inside the patch store"):
        check_not_in_store(Path("sub/report"), "report")


def test_an_onnx_graph_off_only_where_the_sigmoid_is_flat_is_caught(tmp_path: Path) -> None:
    """The fp32 export check compared probabilities only, on noise patches where the bundled
    model gives p near 0.006: a graph whose logits were off by 5 where p is near 0 passed
    (probabilities within 1e-11). Logits are compared too, on noise and smooth patches."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from histodetect.export.onnx import DeployableModel, check_parity, export_loaded
    from histodetect.models import ModelSpec, build_model
    from histodetect.models.checkpoint import LoadedModel
    from histodetect.models.pool_order import relu_before_pool

    torch.manual_seed(0)
    spec = ModelSpec("histocnn", tiny_model_kwargs("histocnn"))
    model = build_model(spec).eval()
    output = model.head[-1]
    with torch.no_grad():
        output.weight.mul_(1e-3)  # logits near the bias, whatever the patch
        output.bias.fill_(-30.0)  # p near 1e-13
    onnx = tmp_path / "m.onnx"
    export_loaded(LoadedModel(model, spec, _touch(tmp_path / "model.pt")), onnx)
    with torch.no_grad():
        output.bias.fill_(-25.0)  # the PyTorch model now differs by 5 in logit
    other = DeployableModel(relu_before_pool(model).eval(), spec).eval()
    with pytest.raises(RuntimeError, match="in logit"):
        check_parity(onnx, other)
