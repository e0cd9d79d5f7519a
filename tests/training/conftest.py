"""Fixtures shared by the training tests."""

from typing import Any

import pytest


@pytest.fixture
def training_auc_targets(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The targets every training-AUC update receives during the test (tensors, in order)."""
    from histodetect.training import module

    scored: list[Any] = []
    real_update = module.BinaryAUROC.update

    def recording_update(self, preds, target):  # type: ignore[no-untyped-def]
        if self.training:
            scored.append(target.detach().clone())
        return real_update(self, preds, target)

    monkeypatch.setattr(module.BinaryAUROC, "update", recording_update)
    return scored
