"""A training run folder's files: which of them histodetect may remove, and reading its JSON.

`train --out` may hold a user's own files beside a run; only what a run writes is ever removed,
and only from a run that failed before its first checkpoint (nothing to resume).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from histodetect.errors import HistodetectError, first_line
from histodetect.modelfiles import MODEL_FILE
from histodetect.training.devices import is_primary_process
from histodetect.training.metrics_log import LOG_DIR, PART_PREFIX

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run_info.json"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
TEACHER_FILE = "teacher.csv"
RUN_FILES = (CONFIG_FILE, RUN_INFO_FILE, SUMMARY_FILE, MODEL_FILE, TEACHER_FILE)
"""The files a run writes at the top of its folder."""
RUN_DIR_FILES = {
    LOG_DIR: ("metrics.csv", "hparams.yaml", f"{PART_PREFIX}*.csv"),
    TENSORBOARD_DIR: ("events.out.tfevents.*", "hparams.yaml"),
}
"""The files a run (its Lightning loggers) writes in each of its subfolders."""


def read_run_json(path: Path) -> dict[str, Any]:
    """A run folder's config.json / run_info.json as a dict.

    Raises:
        HistodetectError: the file is missing, unreadable, not JSON or not an object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HistodetectError(f"{path} is missing; restore it or start a new run.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HistodetectError(
            f"{path} is damaged ({first_line(exc, 80)}); restore it or start a new run."
        ) from None
    if not isinstance(data, dict):
        raise HistodetectError(
            f"{path} is damaged (not a JSON object); restore it or start a new run."
        )
    return data


def clear_failed_start(run_dir: Path) -> None:
    """Remove the files a run that failed before its first checkpoint wrote in `run_dir`,
    and nothing else: a user's own file in logs/ or tensorboard/ stays (they were deleted
    whole). The caller has checked that config.json is one histodetect wrote."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for folder_name, patterns in RUN_DIR_FILES.items():
        folder = run_dir / folder_name
        if not folder.is_dir():
            continue
        for pattern in patterns:
            for path in folder.glob(pattern):
                if path.is_file():
                    path.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()
    checkpoints = run_dir / CHECKPOINT_DIR
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        shutil.rmtree(checkpoints)


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / CHECKPOINT_DIR).glob("*.ckpt")) or (run_dir / MODEL_FILE).exists()


def check_run_dir(run_dir: Path) -> None:
    """Refuse an --out that is a file or holds a run with a checkpoint (changes nothing)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise HistodetectError(f"--out {run_dir} is a file; give a folder for the run.")
    if (run_dir / CONFIG_FILE).exists() and is_primary_process() and _has_checkpoint(run_dir):
        raise HistodetectError(
            f"{run_dir} already holds a run; use --resume {run_dir} or choose another --out."
        )


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run folder; replace a run that never saved a checkpoint (a failed start)."""
    check_run_dir(run_dir)
    if (run_dir / CONFIG_FILE).exists() and is_primary_process():
        _check_own_config(run_dir)
        clear_failed_start(run_dir)  # a run that failed before its first checkpoint: afresh
    run_dir.mkdir(parents=True, exist_ok=True)


def _check_own_config(run_dir: Path) -> None:
    """Refuse a config.json that is not a whole TrainConfig histodetect wrote: any folder with
    a config.json counted as a failed run, and its logs/ and tensorboard/ were deleted whole."""
    from histodetect.training.config import TrainConfig  # config.py reads its file through here

    path = run_dir / CONFIG_FILE
    try:
        saved = read_run_json(path)
        TrainConfig.from_dict(saved)  # refuses a key TrainConfig does not have
        ours = {"data", "out", "model", "epochs"} <= set(saved)  # older runs lack newer keys
    except (HistodetectError, TypeError, ValueError):
        ours = False
    if not ours:
        raise HistodetectError(
            f"--out {run_dir} holds a {CONFIG_FILE} that is not a histodetect training config, "
            "so it is not a run to start afresh; choose another --out (nothing was changed)."
        )
