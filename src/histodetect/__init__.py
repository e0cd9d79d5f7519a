"""histodetect: find metastatic cancer in 96x96 H&E lymph-node patches.

The public API, imported lazily so that `import histodetect` stays instant (no torch):

    from histodetect import ingest, open_store, resolve_config, fit, evaluate, Predictor
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "HistodetectError": "histodetect.errors",
    "IngestOptions": "histodetect.data.ingest",
    "ingest": "histodetect.data.ingest",
    "PatchStore": "histodetect.data.store",
    "open_store": "histodetect.data.store",
    "ModelSpec": "histodetect.models.spec",
    "load_checkpoint": "histodetect.models.checkpoint",
    "TrainConfig": "histodetect.training.config",
    "resolve_config": "histodetect.training.config",
    "fit": "histodetect.training.fit",
    "EvaluateOptions": "histodetect.evaluation.evaluate",
    "evaluate": "histodetect.evaluation.evaluate",
    "Predictor": "histodetect.inference.predictor",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'histodetect' has no attribute {name!r}")
