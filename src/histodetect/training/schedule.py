"""Learning-rate schedules as pure functions of progress, safe to step past the planned end."""

from __future__ import annotations

import math

import torch

ONECYCLE_WARMUP = 0.3  # share of steps rising to the peak, as torch's OneCycleLR
ONECYCLE_START = 1 / 25  # initial lr as a share of the peak
FINAL_SHARE = 1e-4  # last lr as a share of the peak


def _cosine(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


def lr_factor(step: int, total_steps: int, schedule: str, warmup_fraction: float = 0.1) -> float:
    """Multiplier of the peak learning rate at `step` of `total_steps`.

    onecycle: cosine rise from 1/25 to 1 over the first 30 %, then cosine decay to 1e-4.
    cosine: linear warm-up from 0.01 over `warmup_fraction`, then cosine decay to 1e-4.
    constant: 1. Steps past the end keep the final value (a resumed run may take a few more).
    """
    if schedule == "constant":
        return 1.0
    t = min(max(step, 0), total_steps) / max(1, total_steps)
    if schedule == "onecycle":
        if t < ONECYCLE_WARMUP:
            return _cosine(ONECYCLE_START, 1.0, t / ONECYCLE_WARMUP)
        return _cosine(1.0, FINAL_SHARE, (t - ONECYCLE_WARMUP) / (1 - ONECYCLE_WARMUP))
    if schedule == "cosine":
        if t < warmup_fraction:
            return 0.01 + 0.99 * t / warmup_fraction
        return _cosine(1.0, FINAL_SHARE, (t - warmup_fraction) / max(1e-9, 1 - warmup_fraction))
    raise ValueError(f"unknown schedule {schedule!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, schedule: str, warmup_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following `lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, schedule, warmup_fraction)
    )
