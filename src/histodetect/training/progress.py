"""EpochSummary: one printed line per epoch with the metrics, for logs and runs without a bar."""

from __future__ import annotations

import time
from typing import Any

import lightning as L  # noqa: N812 - Lightning's documented alias

SHOWN = ("train_loss_epoch", "train_acc", "train_auc", "val_loss", "val_acc", "val_auc", "lr")


class EpochSummary(L.Callback):
    """Print `epoch 3/20  train_loss 0.412 ... val_auc 0.931  lr 2.1e-03  85 s` after each epoch."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after this epoch's validation, so train and val metrics are both known.
        if not trainer.is_global_zero:
            return
        metrics: dict[str, Any] = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        parts += [
            f"{k.removesuffix('_epoch')} {float(metrics[k]):.4f}" for k in SHOWN if k in metrics
        ]
        parts.append(f"{time.monotonic() - self._started:.0f} s")
        print("  ".join(parts), flush=True)
