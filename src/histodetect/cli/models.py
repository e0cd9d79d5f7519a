"""`histodetect models`: list the registered models with their sizes."""

from __future__ import annotations

import argparse

HELP = "list the models that can be trained, with parameter counts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kwargs", action="store_true", help="also list each builder's options")


def run(args: argparse.Namespace) -> int:
    from histodetect.models import DEFAULT_MODEL, list_models, model_kwarg_names

    print(f"{'name':<16} {'parameters':>12}  description")
    for info in list_models():
        params = f"{info.parameter_count:,}" if info.parameter_count is not None else "-"
        default = " [default]" if info.name == DEFAULT_MODEL else ""
        print(f"{info.name:<16} {params:>12}  {info.description}{default}")
        if args.kwargs:
            print(f"{'':<16} {'':>12}  options: {', '.join(model_kwarg_names(info.name))}")
    return 0
