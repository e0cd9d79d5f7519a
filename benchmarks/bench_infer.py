"""Inference throughput of every CPU/GPU path of one model through the Predictor, same run.

Usage: python benchmarks/bench_infer.py [--model histocnn|seed_cnn|...|PATH] [--crop-px 32]
       [--batch-size 256] [--batches 4] [--repeats 3] [--device cpu] [--quality PER_CLASS]

Paths: torch fp32 eagerly in the default layout (`--precision 32-true HISTODETECT_CPU_NHWC=0`),
torch `auto` (a frozen bf16 channels_last graph where the CPU computes bf16 natively, a frozen
fp32 channels_last graph on other AVX2 CPUs), ONNX Runtime fp32 and int8 (the
model exported by `histodetect export`, int8 calibrated on 256 real training patches).
Every path runs uint8 patches through `Predictor.logits`, preprocessing included. Warm-up
first, then `--repeats` rounds that alternate the paths, `--batches` batches each; the median
img/s is printed with the range, and the CPU other processes used meanwhile.
A registry name benchmarks an untrained model of that family (speed only); `--quality` needs
a trained model file: it adds max |p - p_fp32| and AUC against fp32 on real valid patches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np

from cpu_load import CpuMonitor

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pcam-subset"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def model_file(name_or_path: str, crop_px: int | None, folder: Path) -> Path:
    """The model file to benchmark: a path as given, or an untrained model of a family."""
    if Path(name_or_path).exists():
        return Path(name_or_path)
    import torch

    from histodetect.models import ModelSpec, build_model
    from histodetect.models.checkpoint import save_model

    torch.manual_seed(0)
    spec = ModelSpec(name_or_path, crop_px=crop_px, mean=(0.7, 0.55, 0.68), std=(0.24, 0.28, 0.22))
    save_model(folder / "model.pt", build_model(spec), spec, {})
    return folder / "model.pt"


def real_or_random(n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """n real valid patches (half per class) and labels when the shared data is there, else
    random pixels and no labels."""
    if (SHARED / "valid").is_dir():
        from real_patches import valid_patches

        return valid_patches(SHARED.parent, n // 2)
    return np.random.default_rng(0).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8), None


def predictors(source: Path, folder: Path, device: str, batch: int) -> dict[str, object]:
    """One Predictor per path, all of the same weights."""
    from histodetect.export import export_onnx
    from histodetect.hardware import ENV_CPU_NHWC
    from histodetect.inference.predictor import Predictor

    fp32 = export_onnx(source, folder / "fp32.onnx").path
    if (SHARED / "train").is_dir():
        int8 = export_onnx(source, folder / "int8.onnx", int8_calibration=[SHARED / "train"]).path
    else:
        int8 = fp32
    common = {"device": device, "batch_size": batch}
    auto = Predictor(source, **common)
    with patch.dict(os.environ, {ENV_CPU_NHWC: "0"}):  # the baseline: eager, default layout
        baseline = Predictor(source, precision="32-true", **common)
    return {
        "torch fp32 (eager, NCHW)": baseline,
        f"auto ({auto.description.removeprefix('cpu, ')})": auto,
        "onnxruntime fp32": Predictor(fp32, **common),
        "onnxruntime int8": Predictor(int8, **common),
    }


def throughput(paths: dict[str, object], pixels: np.ndarray, batches: int, repeats: int) -> dict:
    """img/s per path: warm-up, then alternating rounds."""
    for predictor in paths.values():
        predictor.logits(pixels)  # type: ignore[attr-defined]
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, predictor in paths.items():
            start = time.perf_counter()
            for _ in range(batches):
                predictor.logits(pixels)  # type: ignore[attr-defined]
            rates[name].append(batches * len(pixels) / (time.perf_counter() - start))
    return rates


def quality(paths: dict[str, object], per_class: int) -> dict[str, tuple[float, float]]:
    """(max |p - p_fp32|, AUC - AUC_fp32) per path on real valid patches."""
    from histodetect.evaluation.metrics import compute_auc

    pixels, labels = real_or_random(2 * per_class)
    if labels is None:
        return {}
    probs = {name: p.predict_pixels(pixels) for name, p in paths.items()}  # type: ignore[attr-defined]
    base = probs["torch fp32 (eager, NCHW)"]
    auc0 = compute_auc(labels, base)
    print(f"AUC of torch fp32 on {len(labels)} real valid patches: {auc0:.4f}")
    return {
        n: (float(np.abs(p - base).max()), compute_auc(labels, p) - auc0) for n, p in probs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="histocnn")
    parser.add_argument("--crop-px", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quality", type=int, default=0, metavar="PER_CLASS")
    args = parser.parse_args()
    from histodetect.hardware import keep_freed_memory

    keep_freed_memory()  # as every `histodetect` command does (HISTODETECT_KEEP_FREED_MEMORY=0: off)
    import onnxruntime
    import torch

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{onnxruntime.__version__}, {os.cpu_count()} CPUs")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = model_file(args.model, args.crop_px, folder)
        paths = predictors(source, folder, args.device, args.batch_size)
        pixels, _ = real_or_random(args.batch_size)
        monitor = CpuMonitor()
        monitor.start()
        rates = throughput(paths, pixels, args.batches, args.repeats)
        load = monitor.stop()
        diffs = quality(paths, args.quality) if args.quality else {}
    base = statistics.median(rates["torch fp32 (eager, NCHW)"])
    print(f"\n{args.model}, batch {args.batch_size}, {load.text()} over {load.elapsed_s:.0f} s\n")
    print("| path | img/s (median, range) | vs torch fp32 | max abs dp | AUC - AUC fp32 |")
    print("|---|---:|---:|---:|---:|")
    for name, values in rates.items():
        median = statistics.median(values)
        dp, dauc = diffs.get(name, (float("nan"), float("nan")))
        print(f"| {name} | {median:.0f} ({min(values):.0f}-{max(values):.0f}) | "
              f"{median / base:.2f}x | {dp:.4f} | {dauc:+.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
