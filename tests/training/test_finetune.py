"""Fine-tuning: `train --init MODEL` starts from MODEL's weights and keeps its preprocessing,
also when the run is resumed after MODEL has gone, and refuses a network that is not MODEL's."""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from histodetect.cli.main import main
from histodetect.data.inspection import channel_mean_std
from histodetect.data.splits import choose_split
from histodetect.data.store import open_store
from histodetect.models import tiny_model_kwargs
from histodetect.models.checkpoint import load_checkpoint
from histodetect.training.config import resolve_config
from histodetect.training.fit import fit
from imagefiles import make_synthetic_store
from killed_runs import fit_killed_at_step

TINY: dict[str, Any] = {"model": "histocnn", "model_kwargs": tiny_model_kwargs("histocnn"),
                        "precision": "32-true", "batch_size": 32}  # fmt: skip


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finetune")
    make_synthetic_store(root / "a", n=192, seed=0)
    make_synthetic_store(root / "b", n=192, seed=1)
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def base(stores: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finetune") / "base"
    fit(resolve_config(str(stores[0]), str(out), epochs=1, **TINY), progress=False)
    return out


def _parameters(path: Path) -> dict[str, torch.Tensor]:
    return dict(load_checkpoint(path).model.named_parameters())


def _store_stats(store: Path) -> np.ndarray:
    s = open_store(store)
    mean, _ = channel_mean_std(s, choose_split(s, 0.1, 0).train)
    return np.asarray(mean)


def test_init_starts_from_the_models_weights_and_keeps_its_preprocessing(
    stores: tuple[Path, Path], base: Path, tmp_path: Path
) -> None:
    # At a learning rate of 1e-12 the weights cannot move: what the run ends with is where it
    # started. Without --init (the control) it starts from random weights; another seed than
    # the base run's, whose weights after a few steps are still near its own random start.
    quiet = ["--epochs", "1", "--lr", "1e-12", "--batch-size", "32", "--precision", "32-true",
             "--no-progress"]  # fmt: skip
    tuned, scratch = tmp_path / "tuned", tmp_path / "scratch"
    assert (
        main(["train", "--data", str(stores[1]), "--out", str(tuned), "--init", str(base), *quiet])
        == 0
    )
    kwargs = json.dumps(TINY["model_kwargs"])
    assert main(["train", "--data", str(stores[1]), "--out", str(scratch), "--model", "histocnn",
                 "--model-kwargs", kwargs, "--seed", "1", *quiet]) == 0  # fmt: skip
    start, after, control = _parameters(base), _parameters(tuned), _parameters(scratch)
    assert start.keys() == after.keys()
    for name, value in start.items():
        assert torch.allclose(after[name], value, atol=1e-6), name
    assert any(not torch.allclose(control[n], v, atol=1e-3) for n, v in start.items())
    # The network and preprocessing are --init's, not store b's statistics.
    spec, base_spec = load_checkpoint(tuned).spec, load_checkpoint(base).spec
    assert (spec.model_name, spec.model_kwargs, spec.crop_px) == (
        base_spec.model_name, base_spec.model_kwargs, base_spec.crop_px)  # fmt: skip
    assert spec.mean == base_spec.mean and spec.std == base_spec.std
    assert not np.allclose(_store_stats(stores[1]), spec.mean, atol=1e-4), "b's own differ"
    assert np.allclose(load_checkpoint(scratch).spec.mean, _store_stats(stores[1]), atol=1e-5)
    info = json.loads((tuned / "run_info.json").read_text())
    assert info["init"] == str(base.resolve()) and "init_best_val_auc" in info
    assert json.loads((tuned / "config.json").read_text())["init"] == str(base.resolve())


def test_a_resumed_fine_tune_keeps_the_init_preprocessing_when_the_init_is_gone(
    stores: tuple[Path, Path], base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    copy = tmp_path / "base_copy"
    shutil.copytree(base, copy)
    config = resolve_config(str(stores[1]), str(tmp_path / "run"), epochs=2, init=str(copy),
                            checkpoint_every_steps=2, **TINY)  # fmt: skip
    fit_killed_at_step(config, 3, monkeypatch)
    shutil.rmtree(copy)  # a resume needs only its own checkpoint
    result = fit(config, resume=True, progress=False)
    assert result.epochs_run == 2
    spec = load_checkpoint(result.model_path).spec
    assert spec.mean == load_checkpoint(base).spec.mean, "not store b's statistics"


def test_init_bundled_fine_tunes_the_shipped_model(
    stores: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code = main(["train", "--data", str(stores[1]), "--out", str(out), "--init", "bundled",
                 "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "16",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    bundled = load_checkpoint(None)
    spec = load_checkpoint(out).spec
    assert (spec.model_name, spec.model_kwargs) == (
        bundled.spec.model_name,
        bundled.spec.model_kwargs,
    )
    assert spec.mean == bundled.spec.mean
    assert json.loads((out / "run_info.json").read_text())["init"] == str(bundled.path)


def test_a_config_built_in_python_must_name_the_inits_network(
    stores: tuple[Path, Path], base: Path, tmp_path: Path
) -> None:
    from histodetect.errors import HistodetectError

    wider = {**TINY, "model_kwargs": {**TINY["model_kwargs"], "conv_channels": (4, 16)}}
    config = resolve_config(str(stores[1]), str(tmp_path / "run"), epochs=1, init=str(base),
                            **wider)  # fmt: skip
    with pytest.raises(HistodetectError, match=r"--init .* but the run asks for histocnn.*size"):
        fit(config, progress=False)
    assert not (tmp_path / "run").exists(), "refused before the run folder is made"
    # An option that keeps the weights' shapes (dropout) fine-tunes them.
    other = {**TINY, "model_kwargs": {**TINY["model_kwargs"], "dropout": 0.1}}
    config = resolve_config(str(stores[1]), str(tmp_path / "ok"), epochs=1, init=str(base),
                            max_steps_per_epoch=1, **other)  # fmt: skip
    fit(config, progress=False)
    assert load_checkpoint(tmp_path / "ok").spec.model_kwargs["dropout"] == 0.1


def test_init_trained_on_this_store_with_another_split_is_warned_about(
    stores: tuple[Path, Path], base: Path, tmp_path: Path
) -> None:
    from histodetect.data.splits import OptimisticSplitWarning

    config = resolve_config(str(stores[0]), str(tmp_path / "run"), epochs=1, init=str(base),
                            valid_fraction=0.3, max_steps_per_epoch=1, **TINY)  # fmt: skip
    with pytest.warns(
        OptimisticSplitWarning, match=r"--init .* was trained on this store with another split"
    ):
        fit(config, progress=False)
    same = resolve_config(str(stores[0]), str(tmp_path / "same"), epochs=1, init=str(base),
                          max_steps_per_epoch=1, **TINY)  # fmt: skip
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", OptimisticSplitWarning)
        fit(same, progress=False)
