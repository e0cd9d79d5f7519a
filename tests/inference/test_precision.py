"""bf16 (the `auto` path on CPUs with native bf16: a fused bf16 graph for inference) costs no
quality: same model, fp32 against bf16 probabilities on real validation patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histodetect.evaluation.metrics import compute_auc
from histodetect.inference.predictor import Predictor
from real_patches import valid_patches

MAX_AUC_DIFFERENCE = 0.005
MAX_PROBABILITY_DIFFERENCE = 0.02
"""bf16 keeps 8 bits of mantissa: 0.005-0.007 in probability for the bundled model with
BatchNorm folded in fp32 (0.026 when the frozen bf16 graph folded it; docs/BENCHMARKS.md)."""


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


def test_batchnorm_folding_keeps_the_function(shared_data: Path) -> None:
    """The fp32 fold the fused bf16 graph starts from: the same probabilities as the model."""
    import torch

    from histodetect.inference.backends.torch import fold_batchnorm
    from histodetect.models.checkpoint import load_checkpoint
    from histodetect.models.spec import prepare_batch

    pixels, _ = valid_patches(shared_data, per_class=20)
    loaded = load_checkpoint(None)
    folded = fold_batchnorm(loaded.model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.model.modules())  # a copy
    x = prepare_batch(torch.from_numpy(pixels), loaded.spec)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), loaded.model(x), atol=1e-4, rtol=1e-4)


def test_a_batchnorm_subclass_with_its_own_activation_is_not_folded() -> None:
    """From a review: isinstance matched timm's BatchNormAct2d (BN, then its activation), which
    was folded into the conv and replaced by Identity, dropping the activation."""
    import torch
    from torch import nn

    from histodetect.inference.backends.torch import fold_batchnorm

    class BatchNormReLU(nn.BatchNorm2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(super().forward(x))

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), BatchNormReLU(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    model.eval()
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], BatchNormReLU) and isinstance(folded[3], nn.Identity)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
