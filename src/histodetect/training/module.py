"""PatchClassifier: the LightningModule that trains any registered model on uint8 patch batches."""

from __future__ import annotations

import json
from typing import Any

import lightning as L  # noqa: N812 - Lightning's documented alias
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from histodetect.augment import AugmentConfig, apply_augment, mixup
from histodetect.errors import HistodetectError, first_line
from histodetect.hardware import use_channels_last
from histodetect.models import ModelSpec, build_model, normalise, pixels_to_float, prepare_batch
from histodetect.training.config import TrainConfig
from histodetect.training.schedule import make_scheduler


def _build(spec: ModelSpec, given: dict[str, Any]) -> nn.Module:
    """The network of `spec`; a builder option whose name is valid but whose value the network
    cannot take (a dropout of 1.5, a width of -4) is a user error naming --model-kwargs."""
    try:
        return build_model(spec)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise HistodetectError(
            f"--model-kwargs {json.dumps(given)} cannot build {spec.model_name} "
            f"({first_line(exc).rstrip('.')}); check the values (see `histodetect models`)."
        ) from exc


RNG_KEY = "histodetect_rng"
"""Where a checkpoint keeps the training's random states (see `PatchClassifier._restore_rng`)."""


class PatchClassifier(L.LightningModule):
    """Binary tumour classifier: logits from the model, BCE-with-logits loss, accuracy and AUC.

    Batches arrive as uint8 (b, 96, 96, 3) pixels and float labels on the training device;
    augmentation runs there too. Validation feeds pixels through `prepare_batch`, the same
    function every consumer of the checkpoint uses.

    With ``ema_decay > 0`` an exponential moving average of the weights (``self.ema``, updated
    after every optimizer step) is what validation reports as ``val_auc`` and what the exported
    model holds; the raw weights' figures are logged beside it as ``val_auc_raw``, so every run
    measures what the average buys.
    """

    def __init__(self, spec: dict[str, Any], config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec = ModelSpec.from_dict(spec)
        self.config = TrainConfig.from_dict(config)
        self.augment: AugmentConfig = self.config.augment
        self.model = _build(self.spec, self.config.model_kwargs)
        self.loss = nn.BCEWithLogitsLoss()
        self.train_acc, self.val_acc = BinaryAccuracy(), BinaryAccuracy()
        self.train_auc, self.val_auc = BinaryAUROC(), BinaryAUROC()
        self.val_auc_raw = BinaryAUROC()
        self.ema: AveragedModel | None = None
        if self.config.ema_decay > 0:
            self.ema = AveragedModel(
                self.model,
                multi_avg_fn=get_ema_multi_avg_fn(self.config.ema_decay),
                use_buffers=True,
            )
            self.ema.requires_grad_(False)  # updated by averaging, never by the optimizer (DDP)
        self._generator: torch.Generator | None = None
        self._saved_rng: dict[str, Any] | None = None  # from a checkpoint, until restored
        self.channels_last = False
        # Not a registered submodule: checkpoints keep the plain model's parameter names.
        self.__dict__["_compiled"] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (b,) for normalised float images (b, 3, S, S)."""
        # `is None`, not `or`: a compiled module's truthiness calls len(), which raises for
        # models that are not containers (HistoCNN under --compile, found by bench_train).
        compiled = self.__dict__["_compiled"]
        return (self.model if compiled is None else compiled)(x)

    def on_fit_start(self) -> None:
        # Augmentation randomness lives on the training device and differs per process.
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(self.config.seed * 1000 + self.global_rank)
        if self._saved_rng is not None:  # a resumed run whose checkpoint was restored first
            self._restore_rng()
        self.channels_last = use_channels_last(
            self.device.type, self._precision(), training=True, model=self.model
        )
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            if self.ema is not None:
                self.ema.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.config.compile:
            self.__dict__["_compiled"] = torch.compile(self.model)

    def _precision(self) -> str:
        trainer = self._trainer
        return str(trainer.precision) if trainer is not None else "32-true"

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer's step, then the EMA's: here rather than in on_train_batch_end, which
        Lightning calls after the checkpoint callbacks', so a checkpoint taken at a step would
        hold an average one update behind its weights (a resumed run then drifted)."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep where the random streams stand (augmentation, dropout), so a resumed run draws
        what the uninterrupted run would have drawn."""
        if self._generator is None:
            return
        state = {"device": self.device.type, "world_size": self.trainer.world_size,
                 "augment": self._generator.get_state(), "torch": torch.get_rng_state()}  # fmt: skip
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint[RNG_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # {} for a checkpoint written before the streams were saved: new streams, not the first.
        self._saved_rng = {
            **checkpoint.get(RNG_KEY, {}),
            "step": int(checkpoint.get("global_step", 0)),
        }
        self._restore_rng()  # Lightning restores before or after on_fit_start, by strategy

    def _restore_rng(self) -> None:
        """Continue the saved random streams in a one-process run on the same kind of device;
        otherwise (several processes: only rank 0's streams are saved; another device; an
        older checkpoint) start new streams, seeded by the step, that differ from the run's
        first ones and from any earlier resume's."""
        if self._saved_rng is None or self._generator is None:
            return  # nothing to restore, or on_fit_start has not made the generator yet
        saved, self._saved_rng = self._saved_rng, None
        same = saved.get("world_size") == 1 == self.trainer.world_size
        if same and saved.get("device") == self.device.type and "augment" in saved:
            self._generator.set_state(saved["augment"])
            torch.set_rng_state(saved["torch"])
            if "cuda" in saved:
                torch.cuda.set_rng_state(saved["cuda"], self.device)
        else:
            seed = (self.config.seed * 1000 + self.global_rank) * 1_000_003 + saved["step"] + 1
            self._generator.manual_seed(seed)
            torch.manual_seed(seed)  # dropout's stream, on every device

    def _inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """Validation inputs: the preprocessing every consumer of the model uses."""
        return self._layout(prepare_batch(pixels, self.spec))

    def _training_inputs(
        self, pixels: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented inputs and the labels the loss learns (mixed ones under mixup)."""
        x = apply_augment(pixels_to_float(pixels), self.augment, self._generator)
        if self.augment.mixup:
            x, labels = mixup(x, labels, self.augment.mixup_alpha, self._generator)
        return self._layout(normalise(x, self.spec)), labels

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        pixels, labels = batch[0], batch[1]
        targets = labels
        if len(batch) > 2:  # a teacher's probabilities (knowledge distillation)
            w = self.config.distill_weight
            targets = (1.0 - w) * labels + w * batch[2]
        x, targets = self._training_inputs(pixels, targets)
        logits = self(x).float()
        # The loss learns the teacher's blend and/or the mixed labels; accuracy and AUC are
        # scored against each image's own label (under mixup it holds most of the pixels).
        loss = self.loss(logits, targets)
        if not torch.isfinite(loss):
            self._diverged(f"the training loss became {loss.item()}")
        probs = torch.sigmoid(logits.detach())
        self.train_acc.update(probs, labels.int())  # update, not forward: no per-batch compute
        self.train_auc.update(probs, labels.int())
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        self.log("train_auc", self.train_auc, on_step=False, on_epoch=True)
        # mean learning rate over the epoch, so it lands in the epoch's row of metrics.csv
        self.log(
            "lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=False, on_epoch=True
        )
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        pixels, labels = batch
        x = self._inputs(pixels)
        logits = self(x).float()
        if self.ema is not None:
            self.val_auc_raw.update(torch.sigmoid(logits), labels.int())
            self.log("val_auc_raw", self.val_auc_raw, on_epoch=True)
            logits = self.ema.module(x).float()
        if not torch.isfinite(logits).all():
            self._diverged("the model's validation outputs are not finite")
        probs = torch.sigmoid(logits)
        self.val_acc.update(probs, labels.int())
        self.val_auc.update(probs, labels.int())
        self.log(
            "val_loss", self.loss(logits, labels), prog_bar=True, on_epoch=True, sync_dist=True
        )
        self.log("val_acc", self.val_acc, prog_bar=True, on_epoch=True)
        self.log("val_auc", self.val_auc, prog_bar=True, on_epoch=True)

    def _diverged(self, what: str) -> None:
        """Stop the run: a non-finite loss or output is an error, never a score."""
        raise HistodetectError(
            f"training diverged: {what} at epoch {self.current_epoch + 1}, step "
            f"{self.global_step}; lower --lr (it is {self.config.lr:g}) or check the data. No "
            "model was exported; the last checkpoint before the divergence is kept."
        )

    def configure_optimizers(self) -> Any:
        c = self.config
        params = self.model.parameters()
        if c.optimizer == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=c.lr, weight_decay=c.weight_decay
            )
        elif c.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                params, lr=c.lr, momentum=0.9, nesterov=True, weight_decay=c.weight_decay
            )
        if c.schedule == "constant":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = make_scheduler(optimizer, total, c.schedule, c.warmup_fraction)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
