"""`histodetect train`: train a model on a patch store (or resume an interrupted run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from histodetect.cli import options

HELP = "train a model on a patch store; --preset seed reproduces the original write-up"
AUGMENTATIONS = ("d4", "hed", "colour", "blur", "mixup")
STRENGTH_OF = {"hed_sigma": "hed", "hed_bias": "hed", "brightness": "colour", "contrast": "colour",
               "saturation": "colour", "blur_sigma": "blur", "mixup_alpha": "mixup"}  # fmt: skip
"""The augmentation each --augment NAME=VALUE strength belongs to."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=options.path_value, help="patch store folder (from `histodetect ingest`)"
    )
    options.add_out(parser, "run folder to create", required=False)
    parser.add_argument(
        "--resume",
        type=options.path_value,
        metavar="RUN",
        help="continue an interrupted run folder",
    )
    parser.add_argument(
        "--preset", default="default", choices=("default", "seed"), help="recipe to start from"
    )
    parser.add_argument("--model", help="registry name (see `histodetect models`)")
    parser.add_argument(
        "--model-kwargs",
        type=_json_object,
        help="builder options as JSON, e.g. '{\"stage_widths\": [16, 32, 64, 192]}'",
    )
    parser.add_argument(
        "--crop", dest="crop_px", type=int, help="centre crop in px fed to the model (e.g. 32)"
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--optimizer", choices=("adam", "adamw", "sgd"))
    parser.add_argument("--schedule", choices=("onecycle", "cosine", "constant"))
    parser.add_argument(
        "--augment",
        help=f"comma list of {', '.join(AUGMENTATIONS)}, or 'none', and NAME=VALUE strengths "
        "(hed_sigma, hed_bias, brightness, contrast, saturation, blur_sigma, mixup_alpha); default: the preset's",
    )
    parser.add_argument(
        "--early-stop", dest="early_stop_patience", type=int, help="patience in epochs; 0 = off"
    )
    parser.add_argument(
        "--valid-fraction", type=float, help="held out when the store has no valid split"
    )
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap steps per epoch (quick runs)")
    parser.add_argument(
        "--checkpoint-every-steps", type=int, help="save last.ckpt this often (default 200)"
    )
    parser.add_argument(
        "--mpp", type=float, help="microns per pixel of the patches (default 0.972, PCam's)"
    )
    parser.add_argument(
        "--ema-decay", type=float, help="EMA of the weights per step (default 0.99; 0 = off)"
    )
    parser.add_argument(
        "--teacher",
        type=options.path_value,
        help="distil: also learn this model's probabilities on the training patches (a run "
        "folder, model.pt, an ensemble from `histodetect ensemble`, model.onnx, or `bundled`)",
    )
    parser.add_argument(
        "--distill-weight",
        type=float,
        help="share of the teacher's probability in the target (default 0.7; needs --teacher)",
    )
    parser.add_argument(
        "--init",
        metavar="MODEL",
        help="fine-tune: start from this model's weights and preprocessing (a run folder, "
        "model.pt, or 'bundled'); its network is trained, so --model, --model-kwargs and "
        "--crop may be left out",
    )
    parser.add_argument("--accelerator", help="cpu, gpu or auto (default)")
    parser.add_argument("--devices", help="number of devices per node, or auto")
    parser.add_argument("--num-nodes", type=int)
    parser.add_argument("--strategy", help="Lightning strategy (ddp is used for several devices)")
    parser.add_argument(
        "--precision",
        help="auto (bf16-mixed on GPUs and CPUs that compute bf16 natively), 32-true, bf16-mixed",
    )
    parser.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile the model"
    )
    options.add_seed(parser)
    options.add_progress(parser)


def _json_object(text: str) -> dict[str, Any]:
    """--model-kwargs: a JSON object, else an argparse error naming the option (exit 2)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object such as '{{\"dropout\": 0.2}}', got {text!r}"
        )
    return value


def _augment(text: str | None) -> Any:
    """--augment: names to switch on (d4, hed, colour, blur, mixup, or none) and NAME=VALUE strengths, e.g.
    ``d4,hed,colour,hed_sigma=0.05,brightness=0.1``; unnamed strengths keep their defaults."""
    from histodetect.augment import AugmentConfig
    from histodetect.errors import HistodetectError

    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:  # an unset shell variable must not silently train without augmentation
        raise HistodetectError(
            f"--augment is empty ({text!r}); list augmentations ({', '.join(AUGMENTATIONS)}), or "
            "give --augment none to train without augmentation."
        )
    if "none" in items and len(items) > 1:
        raise HistodetectError(
            f"--augment {text!r} gives none together with other augmentations or strengths; "
            "give none alone, or leave it out."
        )
    names = {t for t in items if "=" not in t} - {"none"}
    unknown = names - set(AUGMENTATIONS)
    if unknown:
        raise HistodetectError(
            f"--augment: unknown augmentation {', '.join(sorted(unknown))}; choose from "
            f"{', '.join(AUGMENTATIONS)} or none, plus NAME=VALUE strengths."
        )
    strengths: dict[str, Any] = {}
    for item in (t for t in items if "=" in t):
        key, _, value = item.partition("=")
        try:
            strengths[key.strip()] = float(value)
        except ValueError:
            raise HistodetectError(f"--augment: {item!r} needs a number after '='.") from None
    idle = [key for key in strengths if key in STRENGTH_OF and STRENGTH_OF[key] not in names]
    if idle:
        # A strength of a switched-off augmentation would be silently ignored.
        owner = STRENGTH_OF[idle[0]]
        raise HistodetectError(
            f"--augment: {idle[0]} has no effect without {owner}; add {owner} to the list."
        )
    flags = {name: name in names for name in AUGMENTATIONS}
    try:
        return AugmentConfig.from_dict({**flags, **strengths})
    except HistodetectError as exc:  # name the option, not the config class
        raise HistodetectError(f"--augment: {str(exc).removeprefix('AugmentConfig.')}") from None


RECIPE_OPTIONS = {"data": "--data", "out": "--out", "model": "--model", "model_kwargs": "--model-kwargs",
    "crop_px": "--crop", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
    "weight_decay": "--weight-decay", "optimizer": "--optimizer", "schedule": "--schedule",
    "augment": "--augment", "early_stop_patience": "--early-stop", "valid_fraction": "--valid-fraction",
    "max_steps_per_epoch": "--max-steps-per-epoch", "checkpoint_every_steps": "--checkpoint-every-steps",
    "mpp": "--mpp", "ema_decay": "--ema-decay", "teacher": "--teacher", "distill_weight": "--distill-weight", "init": "--init",
    "accelerator": "--accelerator", "devices": "--devices", "num_nodes": "--num-nodes",
    "strategy": "--strategy", "precision": "--precision", "compile": "--compile"}  # fmt: skip
"""Options a resumed run takes from its config.json instead (given with --resume, refused)."""


def _refuse_settings_with_resume(args: argparse.Namespace) -> None:
    """--resume continues a run with the settings it began with; an option given beside it
    (--epochs 30 to train longer) was silently ignored."""
    from histodetect.errors import HistodetectError

    given = [flag for key, flag in RECIPE_OPTIONS.items() if getattr(args, key, None) is not None]
    if args.preset != "default":
        given.insert(0, "--preset")
    if given:
        raise HistodetectError(
            f"--resume {args.resume} continues the run with the settings it began with, so "
            f"{', '.join(given)} would be ignored; leave {'it' if len(given) == 1 else 'them'} "
            "out (to change the recipe or train longer, start a new run)."
        )


def _init_overrides(args: argparse.Namespace, given: dict[str, Any]) -> dict[str, Any]:
    """--init: its path made absolute (`bundled` as is) and its network (model, builder
    options, crop), so the run trains that network; a preset that names another is refused."""
    from histodetect.errors import HistodetectError
    from histodetect.modelfiles import names_bundled
    from histodetect.training.config import PRESETS
    from histodetect.training.finetune import init_recipe

    if not args.init.strip():  # Path('') is '.': the working folder taken as the model
        raise HistodetectError("--init is empty; give a run folder, a model.pt or `bundled`.")
    init = args.init if names_bundled(args.init) else str(Path(args.init).resolve())
    wanted = {k: given.get(k) for k in ("model", "model_kwargs", "crop_px")}
    flags: dict[str, str] = {}
    for key in ("model", "crop_px"):
        if wanted[key] is None and key in PRESETS[args.preset]:
            wanted[key] = PRESETS[args.preset][key]  # --preset seed names seed_cnn
            flags[key] = f"--preset {args.preset}"
    return {**init_recipe(init, wanted, flags), "init": init}


def run(args: argparse.Namespace) -> int:
    from histodetect.errors import HistodetectError
    from histodetect.training.config import resolve_config
    from histodetect.training.fit import fit
    from histodetect.training.resume import resume_config

    if args.resume is not None:
        _refuse_settings_with_resume(args)
        result = fit(resume_config(args.resume), resume=True, progress=args.progress)
    else:
        if args.data is None or args.out is None:
            raise HistodetectError(
                "give --data STORE and --out RUN_FOLDER (or --resume RUN_FOLDER)."
            )
        # The recipe options as given; data, out, augment and teacher need reading first.
        given_as_is = set(RECIPE_OPTIONS) - {"data", "out", "augment", "teacher", "init"}
        overrides = {k: getattr(args, k) for k in given_as_is}
        if args.distill_weight is not None and args.teacher is None:
            raise HistodetectError(
                "--distill-weight has no effect without --teacher MODEL; add the teacher or "
                "leave it out."
            )
        if args.teacher is not None:
            from histodetect.modelfiles import bundled_model_path, names_bundled

            if names_bundled(args.teacher):
                overrides["teacher"] = str(bundled_model_path())
            elif not args.teacher.exists():
                raise HistodetectError(
                    f"--teacher {args.teacher} does not exist; give a run folder, a model file "
                    "or `bundled`."
                )
            else:
                overrides["teacher"] = str(args.teacher.resolve())
        if args.init is not None:
            overrides.update(_init_overrides(args, overrides))
        overrides["augment"] = _augment(args.augment)
        overrides["seed"] = args.seed
        config = resolve_config(str(args.data), str(args.out), args.preset, **overrides)
        result = fit(config, progress=args.progress)
    from histodetect.training.devices import is_primary_process

    if is_primary_process():  # each DDP worker re-runs this command: one summary, not one each
        print(
            f"Run folder: {result.run_dir} ({result.epochs_run} epochs, {result.elapsed_s:.0f} s)."
        )
        _say_next(result.run_dir)
    return 0


def _say_next(run_dir: Path) -> None:
    """The step a new run needs before its probabilities mean what they say: the default
    recipe comes out overconfident (temperatures 1.26-1.46 fitted on valid, docs/BENCHMARKS.md),
    and predict reads the model's threshold, which training does not fit."""
    import shlex

    from histodetect.training.config import TrainConfig

    data = shlex.quote(TrainConfig.load(run_dir).data)
    print(
        f"Next: `histodetect calibrate {shlex.quote(str(run_dir))} --data {data} --split valid` "
        "fits its "
        "temperature and decision threshold, which predict, slide and serve then use."
    )
