"""Where model files are: a file, a run folder's model.pt or checkpoint, or the bundled model.

Imports no torch, so that commands running an exported model.onnx work without it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from histodetect.errors import HistodetectError

MODEL_FILE = "model.pt"
"""Exported model inside a run folder: weights, ModelSpec and metadata, no optimizer state."""
BUNDLED_MODEL = "bundled/model.pt"
"""The model shipped inside the package, relative to the package folder."""
BUNDLED = "bundled"
"""The word that names the bundled model wherever a model path is taken (`--model bundled`,
`export bundled`, `--teacher bundled`, `--init bundled`), unless a file or folder of that name
exists in the working folder."""


def names_bundled(path: Path | str | None) -> bool:
    """True when `path` means the bundled model: None, or the word `BUNDLED` naming nothing here."""
    return path is None or (str(path) == BUNDLED and not Path(path).exists())


def resolve_model_path(path: Path | str | None) -> Path:
    """The model file meant by `path`: a file, a run folder (its model.pt), or None or the word
    ``bundled`` (the bundled model; see `BUNDLED`)."""
    if path is None or names_bundled(path):
        return bundled_model_path()
    path = Path(path)
    if path.is_dir():
        for candidate in (MODEL_FILE, "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
            if (path / candidate).is_file():
                return path / candidate
        raise HistodetectError(f"{path} holds no model ({MODEL_FILE} or checkpoints/*.ckpt).")
    if not path.is_file():
        raise HistodetectError(f"model {path} does not exist.")
    return path


def bundled_model_path() -> Path:
    """The model shipped inside the package (trained on the PCam subset, see docs/MODEL_CARD.md)."""
    path = Path(str(resources.files("histodetect") / BUNDLED_MODEL))
    if not path.is_file():
        raise HistodetectError("this installation has no bundled model; pass --model <run folder>.")
    return path
