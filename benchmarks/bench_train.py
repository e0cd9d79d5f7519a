"""Training throughput: the real Lightning training step against a compute-only loop, same run.

Usage: python benchmarks/bench_train.py [--model histonet_s] [--batch-size 128] [--steps 30]
       [--data STORE] [--compile] [--device auto|cpu|cuda]

compute-only: the model, AdamW and BCE on one random, already-normalised batch on the device
in the precision and memory layout `train` picks there (`histodetect.hardware`: bf16 autocast
and channels_last on CUDA and on CPUs with native bf16; fp32, channels_last on AVX2 CPUs
without AVX-512), no data movement, no augmentation.
real step: `histodetect.training` as `histodetect train` runs it (batches gathered from the
store tensor, D4 + HED + colour augmentation on the device, metrics, logging), timed over
steady-state steps by a callback. Prints img/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812 - Lightning's documented alias
import torch

from histodetect.models import create_model


def compute_only(
    model_name: str, batch: int, steps: int, device: torch.device, compile_: bool
) -> float:
    from histodetect.hardware import autocast, resolve_precision, use_channels_last

    model = create_model(model_name, input_size_px=96).to(device)
    x = torch.randn(batch, 3, 96, 96, device=device)
    y = torch.randint(0, 2, (batch,), device=device).float()
    precision = resolve_precision("auto", device.type)  # what `train` picks on this device
    if use_channels_last(device.type, precision, training=True, model=model):
        model, x = (
            model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )  # type: ignore[call-overload]
    step_model: Any = torch.compile(model) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), 1e-3)

    def step() -> None:
        with autocast(device.type, precision):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(step_model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


class StepTimer(L.Callback):
    """Times training steps after `warmup` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.steps = warmup, 0.0, 0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            _sync(trainer.strategy.root_device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step > self.warmup:
            self.steps = trainer.global_step - self.warmup


def real_step(
    store_path: Path, model_name: str, batch: int, steps: int, compile_: bool, out: Path
) -> float:
    from histodetect.data.store import open_store
    from histodetect.training.config import resolve_config
    from histodetect.training.data import PatchDataModule
    from histodetect.training.fit import _precision, _spec_for
    from histodetect.training.module import PatchClassifier

    config = resolve_config(
        str(store_path), str(out), model=model_name, batch_size=batch, compile=compile_
    )
    store = open_store(store_path)
    dm = PatchDataModule(store, config)
    module = PatchClassifier(_spec_for(config, store, dm.split.train).to_dict(), config.to_dict())
    timer = StepTimer(warmup=5)
    trainer = L.Trainer(max_steps=steps + 5, precision=_precision(config), callbacks=[timer], logger=False,  # type: ignore[arg-type]
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
                        default_root_dir=out)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    _sync(trainer.strategy.root_device)
    return batch * timer.steps / (time.perf_counter() - timer.start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="histonet_s")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--data", type=Path, help="store to train from (default: 4,096 synthetic patches)"
    )
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    from histodetect.hardware import keep_freed_memory

    keep_freed_memory()  # as every `histodetect` command does (HISTODETECT_KEEP_FREED_MEMORY=0: off)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU x{torch.get_num_threads()} threads"
    )
    print(f"device: {name}; torch {torch.__version__}; load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="histodetect-bench-") as tmp:
        store = args.data
        if store is None:
            from histodetect.data.ingest import IngestOptions, ingest
            from histodetect.data.synthetic import write_kaggle_layout

            n = max(4096, args.batch_size * (args.steps + 10) // 8)
            write_kaggle_layout(Path(tmp) / "synth", n, seed=0, test_fraction=0.0, progress=False)
            store = ingest(Path(tmp) / "synth", Path(tmp) / "store", IngestOptions(progress=False))[
                0
            ].root
        ideal = compute_only(args.model, args.batch_size, args.steps, device, args.compile)
        real = real_step(
            store, args.model, args.batch_size, args.steps, args.compile, Path(tmp) / "run"
        )
    print(
        "\n| model | batch | compile | compute-only (img/s) | real step (img/s) | real / compute-only |"
    )
    print("|---|---:|---|---:|---:|---:|")
    print(
        f"| {args.model} | {args.batch_size} | {args.compile} | {ideal:,.0f} | {real:,.0f} | {real / ideal:.0%} |"
    )


if __name__ == "__main__":
    main()
