"""Fitting a temperature and a decision threshold on a validation split.

scipy and scikit-learn are imported where they are used: `probabilities` is on the inference
path of a deployment that may have neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from histodetect.errors import HistodetectError

THRESHOLD_METHODS = ("0.5", "youden", "sensitivity")
LOG_T_BOUNDS = (-3.0, 3.0)  # temperatures between 0.05 and 20


def probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logits / T), averaged over TTA views when logits are (n, views)."""
    # exp of -|z| only: 1 / (1 + exp(-z)) overflowed for z < -709 and printed numpy's
    # RuntimeWarning, with a source line, into a user's predict output
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(-np.abs(z))
    p = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return p.mean(axis=1) if p.ndim == 2 else p


def tta_mismatch_note(metadata: dict[str, Any], tta: bool, path: Path) -> str | None:
    """A note when a model's saved calibration was fitted with TTA and it runs without (or the
    reverse): the 8 views' mean probability is less extreme than one view's, so the fitted
    temperature and threshold do not carry over. None when they match or nothing says."""
    calibration = metadata.get("calibration")
    if not isinstance(calibration, dict) or not isinstance(calibration.get("tta"), bool):
        return None
    if calibration["tta"] == tta:
        return None
    fitted, now = ("with", "without") if calibration["tta"] else ("without", "with")
    option = " --tta" if tta else ""
    return (f"note: {path} was calibrated {fitted} --tta and runs {now} it, so its threshold "
            "and temperature were fitted to other probabilities (the ranking, and so AUC, is "
            f"the same); to match, calibrate a copy{option}: histodetect calibrate COPY --data "
            f"STORE --split valid{option}.")  # fmt: skip


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of sigmoid(logits / T).

    Temperature scaling (Guo et al. 2017) changes no ranking, so AUC stays; it makes the
    probabilities honest. With TTA logits (n, 8), the mean of the 8 probabilities is scored.
    """
    y = np.asarray(labels, dtype=np.float64)

    def nll(log_t: float) -> float:
        p = np.clip(probabilities(logits, float(np.exp(log_t))), 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    from scipy.optimize import minimize_scalar

    result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded")
    return float(np.exp(result.x))


def temperature_warning(temperature: float) -> str | None:
    """A sentence when a fitted temperature stopped at the end of its range: at 20 the model's
    scores hardly relate to the labels (a collapsed or untrained model, another task's labels),
    at 0.05 they are far too timid; None for an ordinary fit."""
    log_t = float(np.log(temperature))
    if log_t >= LOG_T_BOUNDS[1] - 1e-3:
        return (f"the fitted temperature reached its upper limit ({temperature:.1f}): the "
                "model's scores hardly relate to these labels; check the model and the split.")  # fmt: skip
    if log_t <= LOG_T_BOUNDS[0] + 1e-3:
        return (f"the fitted temperature reached its lower limit ({temperature:.2f}): the "
                "model's logits are far too small for these labels; check the model.")  # fmt: skip
    return None


def parse_threshold_method(text: str) -> tuple[str, float | None]:
    """`--threshold` value: "youden", "sensitivity" or "sensitivity=0.95" (target sensitivity in
    (0, 1]), or a fixed number in [0, 1] such as "0.5".

    Returns:
        ("youden", None), ("sensitivity", target) or ("fixed", value).

    Raises:
        HistodetectError: for anything else, naming the option and the accepted forms.
    """
    forms = "use youden, sensitivity=0.95 or a number in [0, 1]"
    text = str(text).strip()
    if text == "youden":
        return "youden", None
    name, sep, value = text.partition("=")
    if name.strip() == "sensitivity":
        target = _parse_unit_number(value if sep else "0.95", f"--threshold {text!r}: {forms}.")
        if target == 0:
            raise HistodetectError(
                f"--threshold {text!r}: a target sensitivity must lie in (0, 1]."
            )
        return "sensitivity", target
    return "fixed", _parse_unit_number(text, f"--threshold {text!r}: {forms}.")


def _parse_unit_number(text: str, message: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HistodetectError(message) from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise HistodetectError(message)
    return value


def choose_threshold(labels: np.ndarray, probs: np.ndarray, method: str) -> float:
    """Decision threshold on calibrated probabilities.

    Args:
        method: "youden" maximises sensitivity + specificity - 1; "sensitivity=0.95" takes the
            highest threshold whose sensitivity is at least 0.95 (the best specificity that
            keeps that sensitivity); a number is used as it is.
    """
    kind, value = parse_threshold_method(method)
    if kind == "fixed":
        assert value is not None
        return value
    if len(np.unique(labels)) < 2:
        raise HistodetectError("fitting a threshold needs both classes in the calibration split.")
    if np.ptp(np.asarray(probs, dtype=np.float64)) == 0:  # Youden then picked 1.0: all normal
        raise HistodetectError(
            "the model gives every patch of the calibration split the same probability (a "
            "collapsed model), so no threshold can be fitted; retrain it or use another model."
        )
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, probs)
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if kind == "youden":
        return float(thresholds[np.argmax(tpr - fpr)])
    assert value is not None
    ok = np.flatnonzero(tpr >= value)
    return float(thresholds[ok[0]])


ID_SAMPLE_SIZE = 1000
"""Patch ids a calibration keeps (16 hex digits each, about 19 KB): enough to tell that a
report on another store holds its patches, and roughly how many."""


def fitted_id_sample(ids: np.ndarray) -> dict[str, Any]:
    """What a calibration keeps of the patches it was fitted on, to find them again in another
    store (ids are the SHA-1 of the pixels, so a re-ingested copy has the same ones): a fixed
    sample of their ids, cut to 64 bits, and their number."""
    chosen = np.random.default_rng(0).permutation(len(ids))[:ID_SAMPLE_SIZE]
    return {"n_fitted": len(ids), "id_sample": sorted(str(ids[i])[:16] for i in chosen)}


def shared_by_sample(calibration: dict[str, Any], ids: np.ndarray) -> int:
    """About how many of the patches with `ids` the calibration was fitted on: the share of its
    id sample found among them, times the patches it was fitted on (0 when it keeps none)."""
    sample, n_fitted = calibration.get("id_sample"), calibration.get("n_fitted")
    if not isinstance(sample, list) or not sample or not isinstance(n_fitted, int):
        return 0
    present = {str(i)[:16] for i in ids}
    found = sum(str(s) in present for s in sample)
    return min(len(ids), round(found / len(sample) * n_fitted)) if found else 0
