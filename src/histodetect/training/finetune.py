"""Fine-tuning: `histodetect train --init MODEL` starts from a trained model's weights.

The run trains the network of MODEL (a run folder, a model.pt or checkpoint; ``bundled`` for the
model shipped with the package) with the recipe given, from MODEL's weights instead of random
ones, and keeps MODEL's preprocessing (centre crop, channel mean and std): the weights were
learnt on those inputs, so the new store's own statistics would shift every activation. The
use: adapt the bundled model to one's own slides with a short, low-rate run, or continue a
finished run at another schedule (`--resume` only continues an interrupted one).

Where MODEL was trained on the same store with another split it may have trained on patches
this run validates on; that is warned about, as for a teacher.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from histodetect.errors import HistodetectError, first_line
from histodetect.modelfiles import names_bundled
from histodetect.models import ModelSpec, build_model, resolved_model_kwargs
from histodetect.models.checkpoint import LoadedModel, load_checkpoint
from histodetect.training.config import TrainConfig


def load_init(init: str) -> LoadedModel:
    """The model `--init` names, loaded on the CPU (``bundled``: the package's own).

    Raises:
        HistodetectError: a missing, damaged or ONNX file, naming --init.
    """
    if not names_bundled(init) and not Path(init).exists():
        raise HistodetectError(
            f"--init {init} does not exist; give a run folder, a model.pt or `bundled`."
        )
    try:
        return load_checkpoint(init)  # `bundled` included
    except HistodetectError as exc:
        raise HistodetectError(f"--init {init}: {exc}") from None


def init_recipe(
    init: str, given: dict[str, Any], flags: dict[str, str] | None = None
) -> dict[str, Any]:
    """The network options a run from `init` trains: its model, builder options and crop.

    `given` holds what the user passed (None = not given). --model and --crop must be
    `init`'s; --model-kwargs may change options that keep the weights' shapes (a dropout),
    merged over `init`'s. `flags` names where a value came from when not from its own option
    (``{"model": "--preset seed"}``).

    Raises:
        HistodetectError: `init` cannot be loaded, another model or crop, or builder options
            whose network `init`'s weights do not fit.
    """
    flags = {"model": "--model", "crop_px": "--crop", **(flags or {})}
    loaded = load_init(init)
    spec = loaded.spec
    theirs = {"model": spec.model_name, "crop_px": spec.crop_px}
    for key in ("model", "crop_px"):
        if given.get(key) is not None and given[key] != theirs[key]:
            own = flags[key] in ("--model", "--crop")
            what = f"{flags[key]} {given[key]}" if own else f"{flags[key]} (its {given[key]})"
            raise HistodetectError(
                f"{what} differs from --init {init}, which is {_describe(spec)}; leave "
                f"{flags[key]} out to fine-tune it, or train from scratch without --init."
            )
    kwargs = {**spec.model_kwargs, **(given.get("model_kwargs") or {})}
    kwargs = resolved_model_kwargs(spec.model_name, kwargs)
    if kwargs != spec.model_kwargs:
        problem = _misfit(spec, kwargs, loaded)
        if problem:
            raise HistodetectError(
                f"--model-kwargs {json.dumps(given.get('model_kwargs'))} builds a network the "
                f"weights of --init {init} do not fit ({problem}); leave out the options that "
                "change its layers, or train from scratch without --init."
            )
    return {**theirs, "model_kwargs": kwargs}


def _describe(spec: ModelSpec) -> str:
    crop = f"{spec.crop_px} px centre crop" if spec.crop_px else "full patch"
    return f"{spec.model_name} ({crop})"


def _misfit(spec: ModelSpec, kwargs: dict[str, Any], loaded: LoadedModel) -> str | None:
    """Why `loaded`'s weights do not fit `spec`'s network built with `kwargs`, or None."""
    try:
        network = build_model(dataclasses.replace(spec, model_kwargs=kwargs))
    except (RuntimeError, ValueError, TypeError) as exc:
        return first_line(exc, 160).rstrip(".:")
    theirs, mine = loaded.model.state_dict(), network.state_dict()
    for name in mine.keys() & theirs.keys():
        if mine[name].shape != theirs[name].shape:
            return (f"size mismatch: {name} is {tuple(theirs[name].shape)} in --init, "
                    f"{tuple(mine[name].shape)} here")  # fmt: skip
    extra, absent = sorted(mine.keys() - theirs.keys()), sorted(theirs.keys() - mine.keys())
    if extra or absent:
        return f"layers that do not match: {(extra or absent)[0]}"
    return None


def init_spec(config: TrainConfig, loaded: LoadedModel) -> ModelSpec:
    """The run's ModelSpec: `loaded`'s network and preprocessing (centre crop, mean, std) with
    the run's builder options and mpp; no calibration (the run's own fits it again).

    Raises:
        HistodetectError: the config names another model or crop than `loaded`, or builder
            options its weights do not fit (a TrainConfig built in Python without
            `init_recipe`).
    """
    spec = loaded.spec
    kwargs = resolved_model_kwargs(config.model, config.model_kwargs)
    mine = dataclasses.replace(spec, model_kwargs=kwargs)
    problem = None if kwargs == spec.model_kwargs else _misfit(spec, kwargs, loaded)
    if (config.model, config.crop_px) != (spec.model_name, spec.crop_px) or problem:
        raise HistodetectError(
            f"--init {config.init} is {_describe(spec)} with options "
            f"{json.dumps(spec.model_kwargs)}, but the run asks for {config.model} "
            f"({config.crop_px or 'full patch'}) with {json.dumps(config.model_kwargs)}"
            f"{f' ({problem})' if problem else ''}; give the same network, or leave --model, "
            "--model-kwargs and --crop out to take --init's."
        )
    return ModelSpec(
        model_name=spec.model_name,
        model_kwargs=mine.model_kwargs,
        crop_px=spec.crop_px,
        mean=spec.mean,
        std=spec.std,
        mpp=config.mpp,
    )


def init_weights(module: Any, loaded: LoadedModel) -> None:
    """Copy `loaded`'s weights into a fresh PatchClassifier's network and its weight average."""
    state = loaded.model.state_dict()
    module.model.load_state_dict(state)
    if module.ema is not None:
        module.ema.module.load_state_dict(state)


def provenance(init: str, loaded: LoadedModel) -> dict[str, Any]:
    """What run_info.json records of the starting model."""
    return {
        "init": str(loaded.path) if names_bundled(init) else init,
        "init_best_val_auc": loaded.metadata.get("best_val_auc"),
        "init_store": loaded.metadata.get("store"),
    }
