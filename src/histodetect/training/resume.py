"""Resuming a run: its saved config pointed at where the run is now, its last checkpoint, and
the network that checkpoint trains (not today's builder defaults)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from histodetect.errors import HistodetectError
from histodetect.models import ModelSpec, stored_model_kwargs
from histodetect.models.checkpoint import load_tensors
from histodetect.training.config import TrainConfig
from histodetect.training.run_folder import (
    CHECKPOINT_DIR,
    RUN_INFO_FILE,
    SUMMARY_FILE,
    read_run_json,
)


def resume_config(run_dir: Path | str) -> TrainConfig:
    """The config of the run in `run_dir`, pointed at that folder (wherever the run was moved)
    and at its store (as saved, else the absolute path recorded in run_info.json)."""
    run_dir = Path(run_dir)
    config = TrainConfig.load(run_dir)
    data = config.data
    info_path = run_dir / RUN_INFO_FILE
    if not Path(data).is_dir() and info_path.is_file():
        data = str(read_run_json(info_path).get("store_path", data))
    return dataclasses.replace(config, out=str(run_dir), data=data)


def check_resumable(run_dir: Path) -> tuple[Path, dict[str, Any] | None]:
    """The last checkpoint of an unfinished run, and the ModelSpec (as a dict) of the network
    in it (None for a checkpoint that does not record one).

    Raises:
        HistodetectError: a finished run, or a missing or damaged last checkpoint.
    """
    if (run_dir / SUMMARY_FILE).exists():
        raise HistodetectError(
            f"{run_dir} has already finished (see {run_dir / SUMMARY_FILE}); to train longer, "
            "start a new run with more --epochs."
        )
    last = run_dir / CHECKPOINT_DIR / "last.ckpt"
    if not last.is_file():
        raise HistodetectError(f"{run_dir} has no checkpoint to resume from ({last} is missing).")
    payload = load_tensors(last, "restore it or start a new run.")
    spec = payload.get("hyper_parameters", {}).get("spec", {}) if isinstance(payload, dict) else {}
    ok = isinstance(spec, dict) and isinstance(spec.get("model_kwargs"), dict)
    return last, dict(spec) if ok else None


def resumed(run_dir: Path | str) -> tuple[TrainConfig, Path, ModelSpec | None]:
    """The config to resume `run_dir` with, its last checkpoint, and the ModelSpec it trains
    (None for an old checkpoint without one). The network and preprocessing are the
    checkpoint's, not today's defaults or the store's statistics: config.json keeps only the
    model options given, a builder default may have changed since the run began, and a run
    from --init keeps that model's mean and std."""
    config = resume_config(run_dir)
    ckpt_path, trained = check_resumable(Path(run_dir))
    if trained is None:
        return config, ckpt_path, None
    kwargs = stored_model_kwargs(str(trained.get("model_name")), trained["model_kwargs"])
    config = dataclasses.replace(config, model_kwargs=kwargs)
    return config, ckpt_path, ModelSpec.from_dict({**trained, "model_kwargs": kwargs})
