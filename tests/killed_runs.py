"""A training run killed mid-epoch, for the resume tests."""

from typing import Any

import pytest


def fit_killed_at_step(config: Any, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `fit(config)` until the training step at global step `step`, where it dies, as a
    killed run would: its periodic checkpoints stay, and later fits train normally again."""
    from histodetect.training import module
    from histodetect.training.fit import fit

    real = module.PatchClassifier.training_step

    def killed(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.global_step == step:
            raise RuntimeError("killed")
        return real(self, batch, batch_idx)

    monkeypatch.setattr(module.PatchClassifier, "training_step", killed)
    with pytest.raises(RuntimeError, match="killed"):
        fit(config, progress=False)
    monkeypatch.setattr(module.PatchClassifier, "training_step", real)
