"""TrainConfig: the typed schema of a training run, its presets, and the JSON saved beside it."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histodetect.atomic import write_text_atomic
from histodetect.augment import AugmentConfig
from histodetect.errors import HistodetectError, reject_unknown_fields
from histodetect.hardware import PRECISIONS
from histodetect.training.devices import check_accelerator_and_devices
from histodetect.training.run_folder import CONFIG_FILE, read_run_json

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
NORMALISATIONS = ("dataset", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved as config.json in the run folder.

    Attributes:
        data: patch store folder.
        out: run folder (checkpoints, logs, config, model.pt).
        preset: "default" or "seed" (the original write-up's recipe); recorded for provenance.
        model: registry name (see `histodetect models`); model_kwargs go to its builder.
        crop_px: centre crop fed to the model (32 = the write-up's option); None = full 96 px.
        epochs: passes over the training split.
        batch_size: patches per step per device.
        optimizer: adam, adamw or sgd; lr is the peak learning rate.
        schedule: onecycle, cosine (with linear warm-up over warmup_fraction of steps) or constant.
        augment: on-device augmentation; `AugmentConfig.none()` for the seed preset.
        normalise: "dataset" subtracts the training split's channel mean/std; "none" keeps [0, 1].
        early_stop_patience: epochs without a better validation AUC before stopping; 0 = never.
        valid_fraction: share of patches held out when the store has no valid split.
        max_steps_per_epoch: cap on training steps per epoch (quick runs); 0 = no cap.
        checkpoint_every_steps: also save last.ckpt every this many steps, so a killed run
            loses at most that much work.
        precision: "auto" (bf16-mixed on a GPU with bf16 or a CPU with native bf16, else
            32-true), "32-true" or "bf16-mixed"; see `histodetect.hardware`.
        mpp: microns per pixel of the training patches (PCam/Kaggle: 0.972), saved in the
            ModelSpec so whole-slide inference reads slides at the same resolution.
        ema_decay: decay of an exponential moving average of the weights (0 = off); the
            average is what validation scores, the best checkpoint keeps and model.pt holds.
        accelerator, devices, num_nodes, strategy: passed to Lightning (DDP for devices > 1).
        compile: wrap the model in torch.compile.
        data_on_device: "auto" keeps patches on the GPU when they fit, "host" never does.
        teacher: a model file whose probabilities on the training patches the loss also
            learns (knowledge distillation, see `histodetect.training.distill`); None = off.
        distill_weight: share of the teacher's probability in the target,
            ``(1 - w) * label + w * teacher``; used only with a teacher.
        init: a model file (or ``bundled``) whose weights and preprocessing the run starts
            from (fine-tuning, see `histodetect.training.finetune`); None = random weights.
    """

    data: str
    out: str
    preset: str = "default"
    model: str = "histocnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    crop_px: int | None = None
    epochs: int = 16
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.05
    schedule: str = "onecycle"
    warmup_fraction: float = 0.1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    normalise: str = "dataset"
    early_stop_patience: int = 6
    valid_fraction: float = 0.1
    seed: int = 0
    max_steps_per_epoch: int = 0
    checkpoint_every_steps: int = 200
    precision: str = "auto"
    ema_decay: float = 0.99
    mpp: float = 0.972
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    compile: bool = False
    data_on_device: str = "auto"
    teacher: str | None = None
    distill_weight: float = 0.7
    init: str | None = None

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("normalise", self.normalise, NORMALISATIONS)
        _choice("data_on_device", self.data_on_device, ("auto", "host"))
        _choice("precision", self.precision, PRECISIONS)
        check_accelerator_and_devices(self.accelerator, str(self.devices))
        if not 0.0 <= self.ema_decay < 1.0:
            raise HistodetectError(f"EMA decay must lie in [0, 1), got {self.ema_decay}.")
        _whole("--epochs", self.epochs, 1, MAX_EPOCHS)
        _whole("--batch-size", self.batch_size, 1, MAX_BATCH_SIZE)
        _whole("--max-steps-per-epoch", self.max_steps_per_epoch, 0, None)
        _whole("--checkpoint-every-steps", self.checkpoint_every_steps, 1, None)
        _whole("--early-stop", self.early_stop_patience, 0, None)
        _whole("--num-nodes", self.num_nodes, 1, None)
        _whole("--seed", self.seed, 0, 2**32 - 1)
        _number("--mpp", self.mpp, 0.01, 100.0)
        _number("--lr", self.lr, 0.0, MAX_LR, low_open=True)
        _number("--weight-decay", self.weight_decay, 0.0, 1.0)
        _number("warmup fraction", self.warmup_fraction, 0.0, 1.0, high_open=True)
        _number("--valid-fraction", self.valid_fraction, 0.0, 1.0, low_open=True, high_open=True)
        _number("--distill-weight", self.distill_weight, 0.0, 1.0, low_open=True)
        if self.crop_px is not None:
            _whole("--crop", self.crop_px, 16, 96)
        if not isinstance(self.model_kwargs, dict):
            raise HistodetectError(
                f"--model-kwargs must be a JSON object such as '{{\"dropout\": 0.2}}', "
                f"got {json.dumps(self.model_kwargs)}."
            )
        from histodetect.models import resolved_model_kwargs

        resolved_model_kwargs(self.model, self.model_kwargs)  # unknown model or option: raises now

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; `from_dict` reads it back."""
        data = dataclasses.asdict(self)
        data["augment"] = self.augment.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from `to_dict` output; unknown keys raise, naming the valid ones."""
        reject_unknown_fields(cls, data, "training settings")
        values = dict(data)
        values["augment"] = AugmentConfig.from_dict(values.get("augment", {}))
        return cls(**values)

    def save(self, run_dir: Path) -> None:
        """Write config.json atomically into `run_dir`."""
        write_text_atomic(run_dir / CONFIG_FILE, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> TrainConfig:
        """Read config.json of an existing run folder."""
        path = run_dir / CONFIG_FILE
        if not path.is_file():
            raise HistodetectError(f"{run_dir} is not a training run (no {CONFIG_FILE}).")
        return cls.from_dict(read_run_json(path))


MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_LR = 10.0
"""Bounds that catch typos (an lr of 1e9, a batch of a billion) before any work starts."""


def _whole(option: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HistodetectError(f"{option} must be a whole number, got {value!r}.")
    if value < low or (high is not None and value > high):
        upper = f" and at most {high:,}" if high is not None else ""
        raise HistodetectError(f"{option} must be at least {low}{upper}, got {value:,}.")


def _number(option: str, value: object, low: float, high: float, *, low_open: bool = False,
            high_open: bool = False) -> None:  # fmt: skip
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HistodetectError(f"{option} must be a finite number, got {value!r}.")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left, right = ("(" if low_open else "["), (")" if high_open else "]")
        raise HistodetectError(
            f"{option} must lie in {left}{low:g}, {high:g}{right}, got {value:g}."
        )


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise HistodetectError(f"{name} {value!r} is not one of {', '.join(choices)}.")


PRESETS: dict[str, dict[str, Any]] = {
    # The original write-up: Keras Conv2D+MaxPooling CNN, pixels in [0, 1], no augmentation,
    # Adam at Keras' default 1e-3, batch 32 (Keras' default), 10 epochs, no schedule, no early
    # stopping; validation on a stratified random split when the data has no official split.
    "seed": {
        "model": "seed_cnn",
        "epochs": 10,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "schedule": "constant",
        "augment": AugmentConfig.none(),
        "normalise": "none",
        "early_stop_patience": 0,
        "ema_decay": 0.0,
    },
    # Our default (issue 7): histocnn (conv-BN-max-pool blocks, spatial MLP head), D4 + stain +
    # colour augmentation, AdamW one-cycle, an EMA of the weights, selection on validation AUC.
    "default": {},
}


def resolve_config(data: str, out: str, preset: str = "default", **overrides: Any) -> TrainConfig:
    """Start from a preset and apply the options the user gave (None means "not given")."""
    if preset not in PRESETS:
        raise HistodetectError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    values: dict[str, Any] = {**PRESETS[preset], "preset": preset}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(data=data, out=out, **values)
