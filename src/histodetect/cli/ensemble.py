"""`histodetect ensemble`: combine trained models into one model file (mean of their logits)."""

from __future__ import annotations

import argparse
from pathlib import Path

from histodetect.cli import options

HELP = "combine trained models (run folders or model.pt) into one ensemble model.pt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models", type=options.path_value, nargs="+", help="run folders or model.pt files"
    )
    options.add_out(parser, "the ensemble's model file to write (e.g. runs/ensemble/model.pt)")
    options.add_overwrite(parser)


def run(args: argparse.Namespace) -> int:
    from histodetect.atomic import check_replaceable_file
    from histodetect.errors import HistodetectError
    from histodetect.models.checkpoint import is_model_file
    from histodetect.models.ensemble import make_ensemble

    out: Path = args.out
    if out.is_dir():
        raise HistodetectError(f"--out {out} is a folder; give a file name such as {out}/model.pt.")
    if out.suffix != ".pt":
        raise HistodetectError(f"--out {out} must end in .pt: the ensemble is a model.pt file "
                               "(`histodetect export` makes an .onnx from it).")  # fmt: skip
    if any(out.resolve() in (m.resolve(), (m / "model.pt").resolve()) for m in args.models):
        raise HistodetectError(f"--out {out} is one of the models to combine; write the "
                               "ensemble to another file.")  # fmt: skip
    check_replaceable_file(out, args.overwrite, is_model_file, "a histodetect model file")
    path = make_ensemble(args.models, out)  # creates out's folder only once the members load
    print(f"Ensemble of {len(args.models)} models written to {path} (uncalibrated); next: "
          f"histodetect calibrate {path} --data STORE --split valid")  # fmt: skip
    return 0
