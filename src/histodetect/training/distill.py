"""Knowledge distillation: a teacher model's probabilities on the training patches as soft targets.

`histodetect train --teacher MODEL` scores every training patch once with MODEL (any model file
`predict` takes: a run folder, a model.pt, an ensemble built by `histodetect ensemble`, a
model.onnx) before the first step, and the loss then learns
``(1 - w) * label + w * teacher_probability`` (w = ``--distill-weight``). So one model of the
default's cost can learn what an ensemble of several knows (Hinton et al. 2015, "Distilling
the knowledge in a neural network"). The probabilities are written to ``RUN/teacher.csv``
(id, probability), which a resumed run reads instead of scoring again and which records what
the student learned from.

The teacher must not have been trained on the patches the student is validated on, or the
student's validation AUC is optimistic; nothing here can tell, so README says so.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from histodetect.atomic import write_text_atomic
from histodetect.data.splits import Split, warn_if_trained_on_another_split
from histodetect.data.store import PatchStore
from histodetect.errors import HistodetectError
from histodetect.training.config import TrainConfig
from histodetect.training.run_folder import TEACHER_FILE

CHUNK = 1024
"""Patches read from the store and scored per step (bounded memory for any store size)."""


def teacher_probabilities(
    teacher: str,
    store: PatchStore,
    rows: np.ndarray,
    *,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The teacher's calibrated tumour probabilities, float32 (n,), of the store's `rows`, and
    the teacher file's metadata (where and how it was trained).

    Raises:
        HistodetectError: a teacher that cannot be loaded, or non-finite outputs (broken
            weights), naming the file.
    """
    from tqdm import tqdm

    from histodetect.inference.predictor import Predictor

    predictor = Predictor(teacher, device=device, precision=precision)
    print(f"teacher: {predictor.model_path} ({predictor.description}), {len(rows)} patches")
    out = np.empty(len(rows), dtype=np.float32)
    with tqdm(total=len(rows), unit="patch", desc="teacher", disable=not progress) as bar:
        for start in range(0, len(rows), CHUNK):
            part = rows[start : start + CHUNK]
            out[start : start + len(part)] = predictor.predict_pixels(store.read(part))
            bar.update(len(part))
    return out, dict(predictor.metadata)


def write_teacher_file(run_dir: Path, ids: np.ndarray, probabilities: np.ndarray) -> Path:
    """``RUN/teacher.csv``: one row per training patch, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "probability"])
    # 9 significant digits give every float32 back exactly: a resume trains on the same values.
    values = np.asarray(probabilities, dtype=np.float32).tolist()
    writer.writerows((str(i), f"{p:.9g}") for i, p in zip(ids, values, strict=True))
    path = run_dir / TEACHER_FILE
    write_text_atomic(path, buffer.getvalue())
    return path


def read_teacher_file(path: Path, ids: np.ndarray) -> np.ndarray:
    """The probabilities of `ids`, in that order, from a teacher.csv this module wrote.

    Raises:
        HistodetectError: a missing, unreadable or incomplete file, or values outside [0, 1].
    """
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != ["id", "probability"]:
                raise ValueError(f"header {header} is not id,probability")
            table = {row[0]: float(row[1]) for row in reader}
    except FileNotFoundError:
        raise HistodetectError(
            f"{path} is missing, so this distilled run cannot resume with the teacher's targets "
            "it began with; start a new run."
        ) from None
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise HistodetectError(
            f"{path} is damaged ({exc}); start a new run, which scores the teacher again."
        ) from None
    missing = [str(i) for i in ids if str(i) not in table]
    if missing:
        raise HistodetectError(
            f"{path} has no probability for {len(missing)} training patches (first: "
            f"{missing[0]}); it was written for other data; start a new run."
        )
    values = np.array([table[str(i)] for i in ids], dtype=np.float32)
    if not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
        raise HistodetectError(f"{path} holds values outside [0, 1]; start a new run.")
    return values


def score_teacher(
    config: TrainConfig, store: PatchStore, split: Split, progress: bool
) -> np.ndarray:
    """The teacher's probabilities of the training patches, on the device training uses; warns
    when the teacher was trained on this store with another split (it may have trained on
    patches this run validates on)."""
    import torch

    assert config.teacher is not None
    device = "cpu" if config.accelerator == "cpu" else "auto"
    scored, metadata = teacher_probabilities(
        config.teacher, store, split.train, device=device, precision=config.precision,
        progress=progress,
    )  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # what the teacher held must not count against the data
    warn_if_trained_on_another_split(f"the teacher {config.teacher}", metadata, store, split)
    return scored


def teacher_targets(
    config: TrainConfig, store: PatchStore, split: Split, scored: np.ndarray | None
) -> np.ndarray:
    """The teacher's probability per store row (NaN outside the training split), in the first
    process. A new run has `scored` them and saves them as RUN/teacher.csv (float32 written
    exactly, so a resume trains on the same values); a resumed run reads them back."""
    rows = split.train
    ids = store.manifest.ids[rows]
    if scored is not None:
        write_teacher_file(Path(config.out), ids, scored)
        probabilities = scored
    else:
        probabilities = read_teacher_file(Path(config.out) / TEACHER_FILE, ids)
    labels = store.manifest.labels[rows]
    agree = float(((probabilities >= 0.5) == (labels == 1)).mean())
    print(f"teacher agrees with {agree:.1%} of the training labels; target = "
          f"{1 - config.distill_weight:g} x label + {config.distill_weight:g} x teacher")  # fmt: skip
    soft = np.full(len(store), np.nan, dtype=np.float32)
    soft[rows] = probabilities
    return soft
