"""`histodetect export`: a trained model as one ONNX file that runs without torch."""

from __future__ import annotations

import argparse

from histodetect.cli import options

HELP = "export a model to ONNX (preprocessing and ModelSpec inside) for ONNX Runtime deployments"
FORMATS = ("onnx",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        type=options.path_value,
        nargs="?",
        metavar="MODEL",
        help="run folder, model.pt or training checkpoint (default, or `bundled`: the bundled model)",
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="default: onnx")
    options.add_out(parser, "file to write, e.g. model.onnx")
    parser.add_argument(
        "--int8-calibration",
        nargs="+",
        default=(),
        metavar="INPUT",
        help="quantise to int8 (ONNX Runtime, static), with ranges measured on patches from "
        "these inputs (image files, folders, stores as predict takes; use training data); "
        "check the AUC of the result",
    )
    options.add_overwrite(parser)


def run(args: argparse.Namespace) -> int:
    from histodetect.export import export_onnx

    result = export_onnx(
        args.model, args.out, overwrite=args.overwrite, int8_calibration=args.int8_calibration
    )
    spec = result.spec
    print(
        f"Exported {spec.model_name} ({result.precision}) to {result.path} "
        f"({result.size_bytes / 1e6:.1f} MB): "
        f"uint8 (batch, {spec.patch_size_px}, {spec.patch_size_px}, 3) RGB in, logits and "
        f"probability out; threshold {spec.threshold:.4f}, temperature {spec.temperature:.3f}."
    )
    print(
        f"Checked against PyTorch fp32: probabilities differ by at most "
        f"{result.max_probability_difference:.1e}"
        f"{' on patches held out of the calibration' if result.precision == 'int8' else ''}. Run it with "
        f"`histodetect predict INPUT --model {result.path} --out predictions.csv`."
    )
    return 0
