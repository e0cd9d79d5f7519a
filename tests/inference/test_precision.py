"""bf16 (the `auto` path on CPUs with native bf16: a fused bf16 graph for inference) costs no
quality: same model, fp32 against bf16 probabilities on real validation patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histodetect.evaluation.metrics import compute_auc
from histodetect.inference.predictor import Predictor
from real_patches import valid_patches

MAX_AUC_DIFFERENCE = 0.005
MAX_PROBABILITY_DIFFERENCE = 0.05
"""bf16 keeps 8 bits of mantissa: 0.01-0.035 in probability was measured (docs/BENCHMARKS.md)."""


def test_bf16_matches_fp32_on_real_patches(shared_data: Path) -> None:
    pixels, labels = valid_patches(shared_data, per_class=300)
    probs = {
        precision: Predictor(None, device="cpu", precision=precision).predict_pixels(pixels)
        for precision in ("32-true", "bf16-mixed")
    }
    difference = np.abs(probs["32-true"] - probs["bf16-mixed"])
    assert 0 < difference.max() <= MAX_PROBABILITY_DIFFERENCE  # > 0: bf16 really ran
    auc_fp32, auc_bf16 = (compute_auc(labels, probs[p]) for p in ("32-true", "bf16-mixed"))
    assert abs(auc_fp32 - auc_bf16) <= MAX_AUC_DIFFERENCE
    assert auc_fp32 > 0.8  # the model is real, so the comparison means something
