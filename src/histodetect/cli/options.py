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
        "--seed", type=int, default=default, help=f"random seed (default {default})"
    )


def add_workers(parser: argparse.ArgumentParser) -> None:
    """--workers: decoding processes."""
    parser.add_argument(
        "--workers", type=int, default=0, help="decoding processes (default: one per CPU core)"
    )


def add_out(parser: argparse.ArgumentParser, what: str, required: bool = True) -> None:
    """--out: where the command writes."""
    parser.add_argument("--out", type=Path, required=required, help=what)


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """--overwrite: replace an existing output, only once the new one is complete."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output (the old one is kept until the new one is complete)",
    )
