"""Predictor: the one entry point that turns a model file and patches, files, folders, stores
and PCam .h5 files into calibrated tumour probabilities, and the Kaggle-style CSV (`id,label`)
they are written to. It picks the backend from the model file: ONNX Runtime for a model.onnx,
PyTorch for anything else (see `histodetect.inference.backends`)."""

from __future__ import annotations

import csv
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histodetect.atomic import temp_sibling
from histodetect.errors import HistodetectError
from histodetect.inference.backends import N_TTA_VIEWS, InferenceBackend, check_device_name
from histodetect.inference.backends.onnx import is_onnx_path
from histodetect.inference.inputs import Batch, InputGroup, collect_inputs, iter_batches
from histodetect.inference.logits import logits_to_probabilities, require_finite
from histodetect.parallel import default_workers

if TYPE_CHECKING:
    import torch
    from torch import nn

    from histodetect.modelspec import ModelSpec


@dataclass(frozen=True)
class PredictionRow:
    """One input patch: its id, where it came from, and its probability or why it has none.

    Attributes:
        id: file name without extension, store id, or row number in an .h5 file.
        path: the file, or `<store or .h5 path>#<row>`.
        probability: calibrated tumour probability in [0, 1]; None when the input failed.
        error: why the input could not be predicted; None when it was.
        note: how the file was converted to RGB before it was predicted (greyscale, CMYK,
            the first page of a multi-page TIFF...); None when it was read as it is.
    """

    id: str
    path: str
    probability: float | None
    error: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class OpenedModel:
    """A model file ready to score: its backend, spec, resolved path and metadata."""

    backend: InferenceBackend
    spec: ModelSpec
    path: Path
    metadata: dict[str, Any]


def open_model(
    model_path: Path | str | None, device: str = "auto", precision: str = "auto"
) -> OpenedModel:
    """Load a model file with the backend it needs: ONNX Runtime for .onnx, else PyTorch (or,
    at `auto` on a CPU without native bf16, ONNX Runtime where it measures faster:
    `histodetect.inference.backends.auto`).

    Args:
        model_path: model.onnx, model.pt, training checkpoint or run folder; None for the
            bundled model.
        device: "auto", "cpu", "cuda" or "cuda:N".
        precision: "auto", "32-true" or "bf16-mixed" (PyTorch models; an .onnx model runs
            in the precision it was exported in).

    Raises:
        HistodetectError: unknown device or precision, or a model that cannot be loaded.
    """
    from histodetect.hardware import PRECISIONS

    check_device_name(device)
    if precision not in PRECISIONS:
        raise HistodetectError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if is_onnx_path(model_path):
        return _open_onnx(Path(str(model_path)), device, precision)
    from histodetect.inference.backends.torch import TorchBackend, pick_device
    from histodetect.models.checkpoint import load_checkpoint

    torch_device = pick_device(device)
    loaded = load_checkpoint(model_path)
    backend: InferenceBackend = TorchBackend(loaded.model, loaded.spec, torch_device, precision)
    if torch_device.type == "cpu" and precision == "auto":
        from histodetect.inference.backends.auto import faster_cpu_backend

        backend = faster_cpu_backend(loaded, backend, precision)  # type: ignore[arg-type]
    return OpenedModel(backend, loaded.spec, loaded.path, loaded.metadata)


def _open_onnx(path: Path, device: str, precision: str) -> OpenedModel:
    from histodetect.inference.backends.onnx import OnnxBackend
    from histodetect.modelspec import ModelSpec

    if precision == "bf16-mixed":
        raise HistodetectError(f"--precision bf16-mixed applies to PyTorch models; {path} runs "
                               "in the precision it was exported in: use --precision auto.")  # fmt: skip
    backend = OnnxBackend(path, device)
    return OpenedModel(backend, ModelSpec.from_dict(backend.spec_dict), path, backend.metadata)


class Predictor:
    """A model loaded once for inference.

    Args:
        model_path: model.onnx (run by ONNX Runtime), exported model.pt, training checkpoint
            or run folder; None for the bundled model.
        tta: average the probabilities of the 8 dihedral views of each patch.
        device: "auto" (CUDA when present), "cpu" or "cuda".
        batch_size: patches per forward pass.
        precision: "auto" (bf16 autocast + channels_last on devices that compute bf16
            natively), "32-true" or "bf16-mixed"; see `histodetect.hardware`.
    """

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        tta: bool = False,
        device: str = "auto",
        batch_size: int = 256,
        precision: str = "auto",
    ) -> None:
        if batch_size < 1:
            raise HistodetectError(f"--batch-size must be at least 1, got {batch_size}.")
        opened = open_model(model_path, device, precision)
        self.backend: InferenceBackend = opened.backend
        self.spec: ModelSpec = opened.spec
        self.model_path: Path = opened.path
        self.metadata = opened.metadata
        self.tta = tta
        self.batch_size = batch_size
        from histodetect.evaluation.calibration import tta_mismatch_note

        note = tta_mismatch_note(self.metadata, tta, self.model_path)
        if note is not None:
            print(note, file=sys.stderr)

    @property
    def description(self) -> str:
        """Where and how the model runs, e.g. "cpu, torch bf16-mixed" or "cpu, onnxruntime 1.x"."""
        return self.backend.description

    @property
    def model(self) -> nn.Module:
        """The PyTorch model (for Grad-CAM); an .onnx model has none.

        Raises:
            HistodetectError: When the model runs in ONNX Runtime.
        """
        model: nn.Module | None = getattr(self.backend, "model", None)  # TorchBackend's
        if model is None:
            raise HistodetectError(f"{self.model_path} runs in ONNX Runtime, which has no "
                                   "gradients here; use the model.pt it was exported from.")  # fmt: skip
        return model

    @property
    def device_name(self) -> str:
        """The device the model runs on, as torch names it ("cpu", "cuda"); needs no torch."""
        return self.backend.device_name

    @property
    def device(self) -> torch.device:
        """The torch device the model runs on (cuda when ONNX Runtime runs on a GPU)."""
        import torch

        return torch.device(self.backend.device_name)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """Raw logits, float32 (n,) or (n, 8) with TTA, of uint8 (n, S, S, 3) patches.

        Raises:
            HistodetectError: When the model gives NaN or inf (broken weights).
        """
        parts = [
            self.backend.logits(pixels[i : i + self.batch_size], self.tta)
            for i in range(0, len(pixels), self.batch_size)
        ]
        if not parts:
            return np.zeros((0, N_TTA_VIEWS) if self.tta else (0,), dtype=np.float32)
        return require_finite(np.concatenate(parts), self.model_path)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Calibrated tumour probabilities, float64 (n,), of uint8 (n, S, S, 3) patches."""
        return logits_to_probabilities(self.logits(pixels), self.spec)

    def predict_paths(
        self,
        paths: Iterable[str | Path],
        resize: bool = False,
        center_crop: bool = False,
        progress: bool = True,
        workers: int = 0,
    ) -> list[PredictionRow]:
        """One row per patch of image files, folders, globs, stores and .h5 files, in order.

        Args:
            resize: bicubic-resize images of another size to the model's patch size.
            center_crop: take the central patch of larger images.
            workers: decoding processes; 0 means one per CPU core.

        Raises:
            HistodetectError: a path that does not exist or cannot be predicted on at all.
                Unreadable or unusable image files become rows with an error instead.
        """
        groups = collect_inputs(paths)
        return self.predict_inputs(groups, resize, center_crop, progress, workers)

    def predict_inputs(
        self,
        groups: Sequence[InputGroup],
        resize: bool = False,
        center_crop: bool = False,
        progress: bool = True,
        workers: int = 0,
    ) -> list[PredictionRow]:
        """`predict_paths` for inputs already collected by `collect_inputs`."""
        from tqdm import tqdm

        batches = iter_batches(
            groups,
            self.spec.patch_size_px,
            resize=resize,
            center_crop=center_crop,
            workers=workers or default_workers(),
        )
        rows: list[PredictionRow] = []
        total = sum(group.n_patches for group in groups)
        with tqdm(total=total, unit="patch", desc="predict", disable=not progress) as bar:
            for batch in batches:
                rows += batch_rows(batch, self.predict_pixels(batch.pixels))
                bar.update(len(batch.ids))
        return rows


def batch_rows(batch: Batch, probabilities: np.ndarray) -> list[PredictionRow]:
    """Rows of a batch, giving the probabilities in order to the rows read without error."""
    values = iter(probabilities.tolist())
    notes = batch.notes or [None] * len(batch.ids)
    return [
        PredictionRow(pid, path, None if error else float(next(values)), error, note)
        for pid, path, error, note in zip(batch.ids, batch.paths, batch.errors, notes, strict=True)
    ]


# ----------------------------------------------------------------------------- output


def duplicate_ids(rows: Sequence[PredictionRow]) -> list[str]:
    """Ids that occur on more than one row, in order of first appearance."""
    counts = Counter(row.id for row in rows)
    return [pid for pid in dict.fromkeys(row.id for row in rows) if counts[pid] > 1]


PREDICTION_COLUMNS = ("id", "label", "class", "class_name", "path", "error")
"""Every column `write_predictions_csv` may write; its files start with ``id,label``."""


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a folder, lies inside a patch store, or exists when `overwrite`
    is False; with `overwrite`, refuse one that is not a predictions CSV (an input image, a
    store's manifest, a user's own file)."""
    from histodetect.atomic import check_replaceable_file
    from histodetect.data.store import check_not_in_store

    if out.is_dir():
        raise HistodetectError(f"{out} is a folder; give a CSV file name to --out.")
    check_not_in_store(out, "predictions")
    check_replaceable_file(out, overwrite, is_predictions_csv, "a predictions CSV")


def is_predictions_csv(path: Path) -> bool:
    """True when `path` holds what `write_predictions_csv` writes: a header id,label[,...] and
    in every row a label that is empty (an error row) or a probability with six decimals.

    The header alone also matched a user's own labels (Kaggle's train_labels.csv is `id,label`
    with 0 / 1), which --overwrite then replaced.
    """
    import csv
    import re

    probability = re.compile(r"[01]\.\d{6}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            columns = next(reader, [])
            if columns[:2] != ["id", "label"] or not set(columns) <= set(PREDICTION_COLUMNS):
                return False
            for record in reader:
                if not record:  # a blank line (an editor's last newline)
                    continue
                if len(record) != len(columns):
                    return False
                label = record[1]
                if label and not (probability.fullmatch(label) and float(label) <= 1.0):
                    return False
                if not label and ("error" not in columns or not record[columns.index("error")]):
                    return False
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return True


def csv_columns(rows: Sequence[PredictionRow], with_path: bool, with_class: bool) -> list[str]:
    """`id,label`, then class and class_name, path (also when ids repeat), and error if any."""
    columns = ["id", "label"]
    if with_class:
        columns += ["class", "class_name"]
    if with_path or duplicate_ids(rows):
        columns.append("path")
    if any(row.error is not None for row in rows):
        columns.append("error")
    return columns


def write_predictions_csv(
    rows: Sequence[PredictionRow],
    out: Path | str,
    with_path: bool = False,
    with_class: bool = False,
    spec: ModelSpec | None = None,
    *,
    overwrite: bool = False,
) -> list[str]:
    """Write rows as CSV atomically (temp file in the same folder, then rename).

    Probabilities get 6 decimals; failed rows an empty label. `with_class` adds the class at
    ``spec.threshold`` and its name. Returns the columns written.
    """
    out = Path(out)
    if with_class and spec is None:
        raise HistodetectError("with_class needs the model spec (threshold, class names).")
    check_output(out, overwrite)
    columns = csv_columns(rows, with_path, with_class)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns, lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(_csv_record(row, spec) for row in rows)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return columns


def _csv_record(row: PredictionRow, spec: ModelSpec | None) -> dict[str, str]:
    record = {"id": row.id, "label": "", "class": "", "class_name": "", "path": row.path}
    record["error"] = row.error or ""
    if row.probability is not None:
        record["label"] = f"{row.probability:.6f}"
        if spec is not None:
            label = int(row.probability >= spec.threshold)
            record["class"], record["class_name"] = str(label), spec.class_names[label]
    return record
