"""A plain PyTorch training loop (no Lightning, no project training code) for checking recipes.

Issue 7: the default family underfit in the project's pipeline (train AUC about 0.92) while
the issue's reference runs of a similar family reached 0.943 valid. This loop trains
`histocnn` on a store's official split with the issue's reference recipe (D4, brightness,
contrast and per-channel colour jitter, AdamW one-cycle 3e-3, batch 128, [0, 1] pixels, bf16
autocast + channels_last where the CPU has native bf16, final weights) or with the project's
augmentation, EMA and weight decay, so that a pipeline bug and a recipe or model difference
can be told apart. Prints one JSON line per epoch (train loss and AUC on the augmented
batches, valid AUC of the raw and of the EMA weights, seconds).

    OMP_NUM_THREADS=1 python benchmarks/probe_recipe.py --data stores/subset --epochs 8
    OMP_NUM_THREADS=1 python benchmarks/probe_recipe.py --data stores/subset --epochs 8 \\
        --aug project --ema 0.998 --wd 0.05 --norm dataset
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from histodetect.augment import AugmentConfig, apply_augment, random_d4
from histodetect.data.loader import load_split
from histodetect.data.splits import choose_split
from histodetect.data.store import open_store
from histodetect.hardware import cpu_has_native_bf16
from histodetect.models.histocnn import build_histocnn


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="patch store with an official valid split")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--convs", type=int, default=1, help="histocnn convs_per_block")
    parser.add_argument("--aug", default="ref", choices=("ref", "project", "d4", "none"))
    parser.add_argument("--ema", type=float, default=0.0, help="EMA decay per step; 0 = off")
    parser.add_argument("--wd", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument("--lr", type=float, default=3e-3, help="one-cycle peak")
    parser.add_argument("--norm", default="none", choices=("none", "dataset"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=0, help="cap per epoch (smoke runs)")
    parser.add_argument("--out", type=Path, help="write the history here (JSON)")
    return parser.parse_args()


def reference_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """D4, brightness x U(0.85, 1.15), contrast x U(0.8, 1.2), per-channel x U(0.9, 1.1)."""
    n = x.shape[0]
    x = random_d4(x, generator)

    def factor(channels: int, half_width: float) -> torch.Tensor:
        unit = torch.rand(n, channels, 1, 1, generator=generator)
        return 1 + (unit * 2 - 1) * half_width

    brightness, contrast, channel = factor(1, 0.15), factor(1, 0.2), factor(3, 0.1)
    mean = x.mean((1, 2, 3), keepdim=True) * brightness
    return (((x * brightness - mean) * contrast + mean) * channel).clamp(0, 1)


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    store = open_store(args.data)
    split = choose_split(store, 0.1, 0)
    train_pixels, train_labels = load_split(store, split.train)
    valid_pixels, valid_labels = load_split(store, split.valid)
    mean = std = None
    if args.norm == "dataset":
        sample = train_pixels[:4000].float().div(255)
        mean = sample.mean((0, 1, 2)).reshape(1, 3, 1, 1)
        std = sample.std((0, 1, 2)).reshape(1, 3, 1, 1)
    model = build_histocnn(convs_per_block=args.convs).to(memory_format=torch.channels_last)
    ema = None
    if args.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)
    steps = len(train_labels) // args.batch_size
    steps = min(steps, args.max_steps) if args.max_steps else steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=steps * args.epochs
    )
    generator = torch.Generator().manual_seed(args.seed)
    loss_fn = nn.BCEWithLogitsLoss()
    bf16 = cpu_has_native_bf16()

    def autocast() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def model_input(pixels: torch.Tensor, train: bool) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float().div(255)
        if train and args.aug == "ref":
            x = reference_augment(x, generator)
        elif train and args.aug == "project":
            x = apply_augment(x, AugmentConfig(), generator)
        elif train and args.aug == "d4":
            x = random_d4(x, generator)
        if mean is not None and std is not None:
            x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last)

    def valid_auc(net: nn.Module) -> float:
        net.eval()
        with torch.no_grad(), autocast():
            logits = [
                net(model_input(valid_pixels[i : i + 512], train=False)).float()
                for i in range(0, len(valid_labels), 512)
            ]
        net.train()
        return float(roc_auc_score(valid_labels.numpy(), torch.cat(logits).numpy()))

    history = []
    for epoch in range(args.epochs):
        start = time.time()
        order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(epoch))
        total_loss, seen_logits, seen_labels = 0.0, [], []
        for step in range(steps):
            index = order[step * args.batch_size : (step + 1) * args.batch_size]
            labels = train_labels[index]
            with autocast():
                logits = model(model_input(train_pixels[index], train=True)).float()
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if ema is not None:
                ema.update_parameters(model)
            total_loss += loss.item()
            seen_logits.append(logits.detach())
            seen_labels.append(labels)
        row = {
            "epoch": epoch + 1,
            "train_loss": total_loss / steps,
            "train_auc": roc_auc_score(torch.cat(seen_labels), torch.cat(seen_logits)),
            "val_auc": valid_auc(model),
            "val_auc_ema": valid_auc(ema.module) if ema is not None else None,
            "seconds": time.time() - start,
        }
        history.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                        "history": history}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
