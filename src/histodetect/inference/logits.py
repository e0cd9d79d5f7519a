"""What a model's raw logits mean: calibrated probabilities, and none from a broken model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from histodetect.errors import HistodetectError

if TYPE_CHECKING:
    from histodetect.models.spec import ModelSpec


def logits_to_probabilities(logits: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Calibrated tumour probability: sigmoid(logit / temperature), averaged over TTA views.

    The one numpy form of the calibrated probability (`histodetect.evaluation.calibration`
    `.probabilities` with the spec's temperature).

    Args:
        logits: (n,) or (n, views).
    """
    from histodetect.evaluation.calibration import probabilities

    return probabilities(logits, spec.temperature)


def require_finite(logits: np.ndarray, model_path: object) -> np.ndarray:
    """Return `logits`, or raise when any is NaN/inf: a broken model never yields a score.

    Raises:
        HistodetectError: naming the model file and how many patches were affected.
    """
    bad = ~np.isfinite(logits)
    if bad.any():
        n_bad = int(bad.reshape(len(logits), -1).any(axis=1).sum())
        raise HistodetectError(
            f"model {model_path} gave non-finite outputs (NaN or inf) for {n_bad} of "
            f"{len(logits)} patches; its weights are broken (a diverged run?): retrain it."
        )
    return logits
