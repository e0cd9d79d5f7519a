"""Command-line options shared by several commands, each defined once here."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_progress(parser: argparse.ArgumentParser) -> None:
    """--no-progress: hide progress bars (for logs and CI)."""
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide progress bars"
    )


def add_seed(parser: argparse.ArgumentParser, default: int = 0) -> None:
    """--seed: the one seed for splits, sampling and initialisation."""
    parser.add_argument(
        "--seed", type=seed_value, default=default, help=f"random seed (default {default})"
    )


SEED_LIMIT = 2**32
"""Seeds are 0 to 2**32 - 1: what numpy's generators and Lightning's seed_everything take."""


def path_value(text: str) -> Path:
    """argparse type: a path that is not empty (`''` became `.`, and an `--out ''` was then
    refused as ". is a folder")."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    return Path(text)


def seed_value(text: str) -> int:
    """argparse type: a seed, a whole number in [0, 2**32) (argparse names the option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is not a seed; give 0 to {SEED_LIMIT - 1}")
    return value


def add_workers(parser: argparse.ArgumentParser) -> None:
    """--workers: decoding processes."""
    parser.add_argument(
        "--workers",
        type=_non_negative_int,
        default=0,
        help="decoding processes (default 0: one per CPU core)",
    )


def _non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 (one per core) or more")
    return value


def add_fit_to_size(parser: argparse.ArgumentParser) -> None:
    """--resize / --center-crop: what to do with images that are not the model's patch size."""
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--resize", action="store_true", help="resize images of another size (bicubic)"
    )
    size.add_argument(
        "--center-crop", action="store_true", help="take the central patch of larger images"
    )


def add_out(parser: argparse.ArgumentParser, what: str, required: bool = True) -> None:
    """--out: where the command writes."""
    parser.add_argument("--out", type=path_value, required=required, help=what)


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """--overwrite: replace an existing output, only once the new one is complete."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output (the old one is kept until the new one is complete)",
    )


def add_store(parser: argparse.ArgumentParser) -> None:
    """--data: the patch store to read."""
    parser.add_argument("--data", type=path_value, required=True, help="patch store folder")


def add_inference(parser: argparse.ArgumentParser) -> None:
    """--tta, --device, --batch-size, --precision: how a model is run on patches."""
    parser.add_argument(
        "--tta", action="store_true", help="mean of probabilities over the 8 flips/rotations"
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto"
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="patches per forward pass (default 256)"
    )
    parser.add_argument(
        "--precision",
        default="auto",
        help="auto (default: bf16 autocast + channels_last where the device computes bf16 "
        "natively, else fp32), 32-true or bf16-mixed; .onnx models run as exported",
    )


def add_threshold(
    parser: argparse.ArgumentParser, when: str = "", default: str | None = "youden"
) -> None:
    """--threshold: the rule that picks the decision threshold (default None: only when given)."""
    parser.add_argument(
        "--threshold",
        default=default,
        help=f"{when}youden (default), sensitivity=0.95, or a fixed number such as 0.5",
    )
