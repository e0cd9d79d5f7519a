"""Training end to end on tiny synthetic stores: run folder, checkpoints, resume after a kill, DDP."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from histodetect.errors import HistodetectError
from histodetect.models import tiny_model_kwargs
from histodetect.models.checkpoint import load_checkpoint
from histodetect.training.config import TrainConfig, resolve_config
from histodetect.training.fit import fit
from imagefiles import make_synthetic_store
from killed_runs import fit_killed_at_step

TINY = {"model": "histonet", "model_kwargs": tiny_model_kwargs("histonet")}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "histodetect", "train", *args, "--no-progress"]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("train") / "store"
    make_synthetic_store(path, n=320)
    return path


def test_fit_writes_a_complete_run_folder(store_path: Path, tmp_path: Path) -> None:
    config = resolve_config(str(store_path), str(tmp_path / "run"), epochs=2, batch_size=32, **TINY)
    result = fit(config, progress=False)
    run = tmp_path / "run"
    assert result.epochs_run == 2 and result.best_val_auc is not None
    for name in ("config.json", "run_info.json", "summary.json", "model.pt", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "logs/metrics.csv"):  # fmt: skip
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader((run / "logs/metrics.csv").open()))
    epochs = {int(r["epoch"]) for r in rows if r.get("val_auc")}
    assert epochs == {0, 1}
    assert {
        "train_loss_epoch",
        "train_acc",
        "train_auc",
        "val_loss",
        "val_acc",
        "val_auc",
        "lr",
    } <= set(rows[0])
    info = json.loads((run / "run_info.json").read_text())
    assert info["split_method"] == "slide-grouped" and info["slide_disjoint"]
    assert {"torch", "lightning", "histodetect"} <= set(info["versions"])
    loaded = load_checkpoint(run)
    assert loaded.spec.model_name == "histonet" and loaded.spec.mean != (0.0, 0.0, 0.0)
    assert "stem_stride" in loaded.spec.model_kwargs, "defaults are frozen into the spec"
    assert loaded.metadata["store_fingerprint"] == info["store_fingerprint"]
    assert TrainConfig.load(run).to_dict() == json.loads(json.dumps(config.to_dict()))


def test_seed_preset_is_the_original_recipe(store_path: Path, tmp_path: Path) -> None:
    config = resolve_config(
        str(store_path), str(tmp_path / "seed"), "seed", max_steps_per_epoch=2, epochs=1
    )
    assert (config.model, config.optimizer, config.schedule, config.normalise) == (
        "seed_cnn",
        "adam",
        "constant",
        "none",
    )
    assert not (config.augment.d4 or config.augment.hed or config.augment.colour)
    fit(config, progress=False)
    saved = json.loads((tmp_path / "seed" / "config.json").read_text())
    assert saved["preset"] == "seed" and saved["model"] == "seed_cnn"
    assert load_checkpoint(tmp_path / "seed").spec.mean == (0.0, 0.0, 0.0)
    assert resolve_config("d", "o", "seed").epochs == 10


def test_existing_run_and_missing_checkpoint_are_refused(store_path: Path, tmp_path: Path) -> None:
    config = resolve_config(
        str(store_path), str(tmp_path / "run"), epochs=1, max_steps_per_epoch=1, **TINY
    )
    fit(config, progress=False)
    with pytest.raises(HistodetectError, match="already holds a run"):
        fit(config, progress=False)
    with pytest.raises(HistodetectError, match="already finished"):
        fit(config, resume=True, progress=False)  # it would train one more step otherwise
    (tmp_path / "run" / "summary.json").unlink()  # as if killed before the end
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(HistodetectError, match=r"last\.ckpt is damaged"):
        fit(config, resume=True, progress=False)
    last.unlink()
    with pytest.raises(HistodetectError, match="no checkpoint to resume"):
        fit(config, resume=True, progress=False)


def test_killed_run_resumes_to_the_same_epochs(store_path: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--data", str(store_path), "--out", str(run), "--model", "histonet", "--model-kwargs",
            json.dumps(TINY["model_kwargs"]), "--epochs", "5", "--batch-size", "16",
            "--checkpoint-every-steps", "3", "--early-stop", "0"]  # fmt: skip
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let it train a little past the first checkpoint
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists()

    done = subprocess.run(_cli("--resume", str(run)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # Lightning's lines that are no use to a user of this tool stay out of its output
    output = done.stdout + done.stderr
    for line in ("litlogger", "limit_train_batches", "LeafSpec"):
        assert line not in output, output[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 5
    steps_per_epoch = json.loads((run / "run_info.json").read_text())["n_train"] // 16
    # a batch prefetched before the kill may be counted once more or less
    assert abs(summary["global_step"] - 5 * steps_per_epoch) <= 1
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    assert sorted({int(r["epoch"]) for r in rows if r.get("val_auc")}) == [0, 1, 2, 3, 4]


def test_ddp_two_processes_on_cpu(store_path: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    args = ["--data", str(store_path), "--out", str(run), "--model", "histonet", "--model-kwargs",
            json.dumps(TINY["model_kwargs"]), "--epochs", "1", "--batch-size", "16",
            "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]  # fmt: skip
    done = subprocess.run(_cli(*args), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    # each of the 2 processes takes its half of the training patches, in batches of 16
    n_train = json.loads((run / "run_info.json").read_text())["n_train"]
    assert summary["global_step"] == (n_train // 2) // 16
    assert (run / "model.pt").is_file()


def test_compile_trains_through_the_compiled_module(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--compile` used to crash on its first step: `compiled or model` asked the compiled
    # module for len(). The eager dynamo backend keeps this fast; the wrapper is the same.
    import torch

    real_compile = torch.compile
    compiled: list[torch.nn.Module] = []

    def eager_compile(model: torch.nn.Module) -> torch.nn.Module:
        compiled.append(real_compile(model, backend="eager"))
        return compiled[-1]

    monkeypatch.setattr(torch, "compile", eager_compile)
    tiny = {"model": "histocnn", "model_kwargs": tiny_model_kwargs("histocnn")}
    config = resolve_config(
        str(store_path), str(tmp_path / "run"), epochs=1, batch_size=32, compile=True, **tiny
    )
    result = fit(config, progress=False)
    assert result.epochs_run == 1 and len(compiled) == 1
    loaded = load_checkpoint(tmp_path / "run")
    # The file holds the plain model's parameter names, not the compiled wrapper's.
    assert not any("_orig_mod" in key for key in loaded.model.state_dict())


def test_mixup_trains_on_soft_labels_and_scores_the_images_own(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, training_auc_targets: list
) -> None:
    import torch

    from histodetect.augment import AugmentConfig
    from histodetect.training import module

    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_mixup = module.mixup

    def recording_mixup(x, labels, alpha, generator):  # type: ignore[no-untyped-def]
        out = real_mixup(x, labels, alpha, generator)
        calls.append((labels, out[1]))
        return out

    monkeypatch.setattr(module, "mixup", recording_mixup)
    config = resolve_config(
        str(store_path), str(tmp_path / "run"), epochs=1, batch_size=32,
        augment=AugmentConfig(mixup=True, mixup_alpha=1.0), **TINY,
    )  # fmt: skip
    result = fit(config, progress=False)
    assert result.epochs_run == 1 and calls, "mixup ran on every training batch"
    labels, soft = calls[0]
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    assert ((soft > 0) & (soft < 1)).any(), "the loss saw mixed, soft labels"
    # Training AUC is scored against each image's own label, not the mixed one.
    scored = training_auc_targets
    assert scored and torch.equal(scored[0].float(), labels)
    rows = list(csv.DictReader((tmp_path / "run/logs/metrics.csv").open()))
    assert any(r.get("train_auc") for r in rows), "training AUC is still scored"
    assert TrainConfig.load(tmp_path / "run").augment.mixup


def test_a_resumed_run_ends_exactly_where_the_uninterrupted_run_ends(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed mid-epoch and resumed from its periodic checkpoint, a run trains the same batches
    with the same augmentation and dropout draws and the same weight average as a run that was
    never stopped. Found broken three ways: the resumed epoch began again from its first
    batch (Lightning restores the loader position only into a loader built after the restore,
    and the one-cycle schedule's length builds it before), the random streams were seeded
    afresh, and checkpoints held an EMA one update behind the weights."""
    import torch

    from histodetect.models import tiny_model_kwargs as tiny

    settings: dict[str, Any] = {
        "epochs": 2, "batch_size": 32, "model": "histocnn", "model_kwargs": tiny("histocnn"),
        "checkpoint_every_steps": 3, "early_stop_patience": 0, "precision": "32-true",
    }  # fmt: skip
    fit(resolve_config(str(store_path), str(tmp_path / "whole"), **settings), progress=False)
    config = resolve_config(str(store_path), str(tmp_path / "resumed"), **settings)
    fit_killed_at_step(config, 5, monkeypatch)
    saved = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=False)
    assert saved["global_step"] == 3, "the periodic checkpoint before the kill"
    fit(config, resume=True, progress=False)
    whole, resumed = (
        torch.load(tmp_path / name / "checkpoints/last.ckpt", weights_only=False)
        for name in ("whole", "resumed")
    )
    assert whole["global_step"] == resumed["global_step"] == 2 * (280 // 32)
    assert whole["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in whole["state_dict"].items():  # the weights and their average (ema.*)
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_a_checkpoint_without_saved_streams_resumes_with_new_ones(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint written before the random streams were saved (or by several processes)
    resumes with streams seeded by its step, not with the run's first ones again."""
    import torch

    from histodetect.training import module

    config = resolve_config(str(store_path), str(tmp_path / "run"), epochs=1, batch_size=32,
                            checkpoint_every_steps=3, **TINY)  # fmt: skip
    real = module.PatchClassifier.training_step
    seeds: list[int] = []

    def step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        seeds.append(self._generator.initial_seed())
        if self.global_step == 5 and len(seeds) == 6:
            raise RuntimeError("killed")
        return real(self, batch, batch_idx)

    monkeypatch.setattr(module.PatchClassifier, "training_step", step)
    with pytest.raises(RuntimeError, match="killed"):
        fit(config, progress=False)
    last = tmp_path / "run/checkpoints/last.ckpt"
    payload = torch.load(last, weights_only=False)
    assert payload["global_step"] == 3 and module.RNG_KEY in payload
    del payload[module.RNG_KEY]
    torch.save(payload, last)
    seeds.clear()
    fit(config, resume=True, progress=False)
    first_run_seed = config.seed * 1000
    assert seeds and seeds[0] != first_run_seed, "new streams, not the first ones again"
    assert seeds[0] == first_run_seed * 1_000_003 + 3 + 1, "seeded by the checkpoint's step"


@pytest.mark.parametrize("cuda", [False, True])
def test_the_training_device_and_its_precision_follow_one_rule(
    cuda: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from histodetect.training import fit as fit_module
    from histodetect.training.devices import on_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert on_cuda("auto") is cuda and on_cuda("gpu") and on_cuda("cuda")
    assert not on_cuda("cpu") and not on_cuda("mps")
    seen: list[str] = []
    monkeypatch.setattr(fit_module, "resolve_precision", lambda p, device: seen.append(device) or p)
    for accelerator in ("auto", "cpu", "gpu"):
        fit_module._precision(_config_on(accelerator))
    assert seen == (["cuda", "cpu", "cuda"] if cuda else ["cpu", "cpu", "cpu"])


def _config_on(accelerator: str) -> TrainConfig:
    """A config that asks for `accelerator` (no store or run folder is touched)."""
    return resolve_config("store", "run", accelerator=accelerator)


def test_a_run_begun_before_input_norm_existed_resumes_without_it(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed before histocnn had `input_norm` (its checkpoint's spec lacks the option)
    resumes the network it was training, not today's default (`instance`)."""
    import torch

    from histodetect.training.resume import resumed

    tiny = {"model": "histocnn", "model_kwargs": tiny_model_kwargs("histocnn")}
    config = resolve_config(str(store_path), str(tmp_path / "run"), epochs=1, batch_size=32,
                            checkpoint_every_steps=2, **tiny)  # fmt: skip
    fit_killed_at_step(config, 3, monkeypatch)
    last = tmp_path / "run/checkpoints/last.ckpt"
    payload = torch.load(last, weights_only=False)
    assert payload["hyper_parameters"]["spec"]["model_kwargs"].pop("input_norm") == "instance"
    torch.save(payload, last)  # as a checkpoint written before the option existed
    resumed, _, spec = resumed(tmp_path / "run")
    assert spec is not None and spec.model_kwargs["input_norm"] == "none"
    assert resumed.model_kwargs["input_norm"] == "none"
    fit(config, resume=True, progress=False)
    assert load_checkpoint(tmp_path / "run").model.input_norm == "none"  # type: ignore[attr-defined]
