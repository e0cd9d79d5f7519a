"""`histodetect ensemble`: combine trained models into one model file (mean of their logits)."""

from __future__ import annotations

import argparse
from pathlib import Path

from histodetect.cli import options

HELP = "combine trained models (run folders or model.pt) into one ensemble model.pt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", type=Path, nargs="+", help="run folders or model.pt files")
    options.add_out(parser, "the ensemble's model file to write (e.g. runs/ensemble/model.pt)")
    options.add_overwrite(parser)


def run(args: argparse.Namespace) -> int:
    from histodetect.errors import HistodetectError
    from histodetect.models.ensemble import make_ensemble

    out: Path = args.out
    if out.is_dir():
        raise HistodetectError(f"--out {out} is a folder; give a file name such as {out}/model.pt.")
    if out.exists() and not args.overwrite:
        raise HistodetectError(f"--out {out} already exists; choose another or pass --overwrite.")
    out.parent.mkdir(parents=True, exist_ok=True)
    path = make_ensemble(args.models, out)
    print(f"Ensemble of {len(args.models)} models written to {path} (uncalibrated); next: "
          f"histodetect calibrate {path} --data STORE --split valid")  # fmt: skip
    return 0
