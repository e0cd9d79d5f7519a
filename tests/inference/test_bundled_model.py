"""The model shipped in the package loads, predicts real patches, and matches its model card."""

import re
from pathlib import Path

import numpy as np
import pytest

from histodetect.evaluation.metrics import compute_auc
from histodetect.inference.scoring import logits_to_probabilities, score_array
from histodetect.models.checkpoint import bundled_model_path, load_checkpoint

MODEL_CARD = Path(__file__).resolve().parents[2] / "docs" / "MODEL_CARD.md"
TOLERANCE = 0.005


def test_bundled_model_is_small_and_calibrated() -> None:
    path = bundled_model_path()
    assert path.stat().st_size < 8_000_000
    loaded = load_checkpoint(None)
    assert loaded.metadata["calibration"]["split"] == "valid"
    assert 0.0 < loaded.spec.threshold < 1.0 and loaded.spec.temperature > 0


def test_bundled_model_reaches_its_card_auc_on_real_valid_patches(subset_store) -> None:
    loaded = load_checkpoint(None)
    rows = subset_store.indices("valid", labelled=True)
    logits = score_array(loaded.model, loaded.spec, subset_store.read(rows))
    probs = logits_to_probabilities(logits, loaded.spec)
    labels = subset_store.manifest.labels[rows].astype(int)
    auc = compute_auc(labels, probs)
    card_auc = loaded.metadata["valid_auc"]
    assert auc == pytest.approx(card_auc, abs=TOLERANCE)
    match = re.search(r"validation AUC \(no TTA\): \*\*([0-9.]+)\*\*", MODEL_CARD.read_text())
    assert match, "the model card must state the validation AUC"
    assert float(match.group(1)) == pytest.approx(card_auc, abs=0.00051)
    accuracy = float(((probs >= loaded.spec.threshold) == labels).mean())
    assert accuracy > 0.7 and np.isfinite(probs).all()
