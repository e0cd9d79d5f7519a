"""Model zoo (registry of families), ModelSpec, and the one preprocessing path."""

# Importing a family module registers its models.
from histodetect.models import ensemble, histocnn, histonet, seed_cnn, timm_backbone  # noqa: F401
from histodetect.models.registry import (
    ModelInfo,
    count_parameters,
    create_model,
    list_models,
    model_kwarg_names,
    model_names,
    register_model,
    resolved_model_kwargs,
    stored_model_kwargs,
    tiny_model_kwargs,
)
from histodetect.models.spec import (
    ModelSpec,
    build_model,
    logits_to_probability,
    normalise,
    pixels_to_float,
    prepare_batch,
)

DEFAULT_MODEL = "histocnn"
"""Registry name used when the user names no model; see `histodetect.models.histocnn`."""

__all__ = [
    "DEFAULT_MODEL",
    "ModelInfo",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "create_model",
    "list_models",
    "logits_to_probability",
    "model_kwarg_names",
    "model_names",
    "normalise",
    "pixels_to_float",
    "prepare_batch",
    "register_model",
    "resolved_model_kwargs",
    "stored_model_kwargs",
    "tiny_model_kwargs",
]
