"""Knowledge distillation: `train --teacher MODEL` learns a blend of labels and a teacher's
probabilities, records them in RUN/teacher.csv, and resumes from that file."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from histodetect.data.splits import OptimisticSplitWarning
from histodetect.data.store import open_store
from histodetect.errors import HistodetectError
from histodetect.models import tiny_model_kwargs
from histodetect.training.config import resolve_config
from histodetect.training.distill import TEACHER_FILE, read_teacher_file, write_teacher_file
from histodetect.training.fit import SUMMARY_FILE, fit
from imagefiles import make_synthetic_store

TINY = {"model": "histonet", "model_kwargs": tiny_model_kwargs("histonet")}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("distill") / "store"
    make_synthetic_store(path, n=192)
    return path


@pytest.fixture(scope="module")
def teacher(store_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("distill") / "teacher"
    fit(resolve_config(str(store_path), str(out), epochs=1, batch_size=32, **TINY), progress=False)
    return out


def test_teacher_file_round_trip_and_refusals(tmp_path: Path) -> None:
    ids = np.array(["a", "b", "c"])
    write_teacher_file(tmp_path, ids, np.array([0.1, 0.5, 0.9], dtype=np.float32))
    path = tmp_path / TEACHER_FILE
    back = read_teacher_file(path, np.array(["c", "a"]))
    assert np.allclose(back, [0.9, 0.1]), "read back by id, in the order asked"
    with pytest.raises(HistodetectError, match=r"no probability for 1 training patches.*first: d"):
        read_teacher_file(path, np.array(["a", "d"]))
    path.write_text("id,probability\na,1.5\n")
    with pytest.raises(HistodetectError, match=r"outside \[0, 1\]"):
        read_teacher_file(path, np.array(["a"]))
    path.write_text("name,p\na,0.5\n")
    with pytest.raises(HistodetectError, match="damaged"):
        read_teacher_file(path, np.array(["a"]))
    path.write_text("id,probability\na,oops\n")
    with pytest.raises(HistodetectError, match="damaged"):
        read_teacher_file(path, np.array(["a"]))
    path.unlink()
    with pytest.raises(HistodetectError, match="missing"):
        read_teacher_file(path, np.array(["a"]))


def test_distilled_run_learns_the_blend_and_scores_the_hard_labels(
    store_path: Path,
    teacher: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    training_auc_targets: list,
) -> None:
    import torch

    from histodetect.inference.predictor import Predictor
    from histodetect.training import module

    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # labels, teacher, target
    real = module.PatchClassifier._training_inputs

    def recording(self, pixels, targets):  # type: ignore[no-untyped-def]
        batch = self._current_batch
        seen.append((batch[1].clone(), batch[2].clone(), targets.clone()))
        return real(self, pixels, targets)

    real_step = module.PatchClassifier.training_step

    def step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        self._current_batch = batch
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(module.PatchClassifier, "_training_inputs", recording)
    monkeypatch.setattr(module.PatchClassifier, "training_step", step)
    out = tmp_path / "student"
    config = resolve_config(
        str(store_path), str(out), epochs=1, batch_size=32, teacher=str(teacher),
        distill_weight=0.6, **TINY,
    )  # fmt: skip
    result = fit(config, progress=False)
    assert result.epochs_run == 1 and seen
    # RUN/teacher.csv: the teacher's probability of every training patch, as predict gives it.
    rows = list(csv.DictReader((out / TEACHER_FILE).open()))
    store = open_store(store_path)
    from histodetect.data.splits import choose_split

    train_rows = choose_split(store, 0.1, 0).train
    assert [r["id"] for r in rows] == [str(i) for i in store.manifest.ids[train_rows]]
    expected = Predictor(teacher).predict_pixels(store.read(train_rows))
    assert np.allclose([float(r["probability"]) for r in rows], expected, atol=2e-6)
    # The loss learns 0.4 x label + 0.6 x teacher; the teacher's values are exactly the file's
    # (float32 written with 9 digits), so a resumed run trains on the same targets.
    file_values = set(np.array([r["probability"] for r in rows], dtype=np.float32).tolist())
    for labels, soft, target in seen:
        assert torch.allclose(target, 0.4 * labels + 0.6 * soft)
        assert set(soft.tolist()) <= file_values
        assert ((target > 0) & (target < 1)).any(), "soft targets, not the labels"
    # Training AUC is scored against the images' own labels.
    scored = training_auc_targets
    assert scored and torch.equal(scored[0].float(), seen[0][0])


def test_resume_reads_the_teachers_file_not_the_teacher(
    store_path: Path, teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "teacher_copy"
    shutil.copytree(teacher, gone)
    out = tmp_path / "student"
    config = resolve_config(
        str(store_path), str(out), epochs=1, batch_size=32, teacher=str(gone), **TINY
    )
    fit(config, progress=False)
    saved = (out / TEACHER_FILE).read_text()
    (out / SUMMARY_FILE).unlink()  # as if stopped after its last checkpoint
    shutil.rmtree(gone)  # the teacher is no longer there: the file must be enough
    capsys.readouterr()
    fit(config, resume=True, progress=False)
    assert "teacher agrees with" in capsys.readouterr().out
    assert (out / TEACHER_FILE).read_text() == saved
    (out / SUMMARY_FILE).unlink()
    (out / TEACHER_FILE).write_text("id,probability\nnot-a-patch,0.5\n")
    logs = sorted(p.name for p in (out / "logs").iterdir())
    with pytest.raises(HistodetectError, match=r"no probability for .* training patches"):
        fit(config, resume=True, progress=False)
    assert sorted(p.name for p in (out / "logs").iterdir()) == logs, (
        "a refused resume moves nothing"
    )


def test_a_teacher_trained_on_another_split_of_this_store_is_named(
    store_path: Path, teacher: Path, tmp_path: Path
) -> None:
    """The teacher validated on 10% of the slides; a student validating on 30% would be
    validated on patches the teacher trained on."""
    config = resolve_config(
        str(store_path), str(tmp_path / "student"), epochs=1, batch_size=32,
        teacher=str(teacher), valid_fraction=0.3, max_steps_per_epoch=1, **TINY,
    )  # fmt: skip
    with pytest.warns(OptimisticSplitWarning, match="trained on this store with another split"):
        fit(config, progress=False)


def test_every_process_of_a_ddp_run_learns_the_teachers_targets(
    store_path: Path, teacher: Path, tmp_path: Path
) -> None:
    """Only the first process scores the teacher; the others receive its probabilities (a
    process without them stops the run, so success means every process had them)."""
    import json
    import subprocess
    import sys

    run = tmp_path / "ddp"
    args = [sys.executable, "-m", "histodetect", "train", "--data", str(store_path), "--out",
            str(run), "--model", "histonet", "--model-kwargs", json.dumps(TINY["model_kwargs"]),
            "--epochs", "1", "--batch-size", "16", "--accelerator", "cpu", "--devices", "2",
            "--strategy", "ddp", "--teacher", str(teacher), "--no-progress"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("teacher: ") == 1, "scored once, by the first process"
    assert (run / TEACHER_FILE).is_file() and (run / "model.pt").is_file()
