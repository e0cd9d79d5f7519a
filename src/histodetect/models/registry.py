"""Explicit name → builder registry for every model family histodetect can train."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from histodetect.errors import HistodetectError

ModelBuilder = Callable[..., nn.Module]
"""A function that returns a model; keyword arguments only, each with a default, and it must
accept ``input_size_px`` (side of the square input in pixels)."""


@dataclass(frozen=True)
class ModelInfo:
    """What `list_models` reports about one registered model.

    Attributes:
        name: Registry name passed to `create_model`.
        description: One sentence on what the model is and when to use it.
        parameter_count: Trainable + frozen parameters of the default build (96 px input), or
            None when the default build needs an optional dependency that is not installed.
        tiny_kwargs: Keyword arguments that build a very small variant, for fast tests.
    """

    name: str
    description: str
    parameter_count: int | None
    tiny_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    builder: ModelBuilder
    description: str
    tiny_kwargs: dict[str, Any]
    kwarg_names: tuple[str, ...]
    added_kwargs: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, _Entry] = {}
_PARAMETER_COUNTS: dict[str, int | None] = {}


def _builder_kwarg_names(name: str, builder: ModelBuilder) -> tuple[str, ...]:
    """Return the keyword names a builder accepts, refusing signatures we cannot check."""
    parameters = inspect.signature(builder).parameters.values()
    names: list[str] = []
    for parameter in parameters:
        if parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            raise HistodetectError(
                f"Builder for model {name!r} takes *args/**kwargs, so its keyword arguments "
                "cannot be checked; list them explicitly."
            )
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise HistodetectError(f"Builder for model {name!r} has positional-only parameters.")
        if parameter.default is inspect.Parameter.empty:
            raise HistodetectError(
                f"Builder for model {name!r} needs a default for {parameter.name!r}."
            )
        names.append(parameter.name)
    if "input_size_px" not in names:
        raise HistodetectError(f"Builder for model {name!r} must accept input_size_px.")
    return tuple(names)


def register_model(
    name: str,
    builder: ModelBuilder,
    *,
    description: str,
    tiny_kwargs: Mapping[str, Any],
    added_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Add a model to the registry.

    Args:
        name: Unique registry name, e.g. ``"histonet_s"``.
        builder: Function returning an ``nn.Module`` that maps (N, 3, S, S) float input to
            (N,) logits; keyword arguments only, all with defaults, including ``input_size_px``.
        description: One sentence shown by `list_models`.
        tiny_kwargs: Keyword arguments for a very small variant used by the test suite.
        added_kwargs: Builder options added after models of this family were saved, each with
            the value those models were built with (often not today's default); see
            `stored_model_kwargs`.

    Raises:
        HistodetectError: If the name is taken, the builder's signature cannot be checked,
            or ``tiny_kwargs`` names an argument the builder does not accept.
    """
    if name in _REGISTRY:
        raise HistodetectError(f"Model name {name!r} is already registered.")
    kwarg_names = _builder_kwarg_names(name, builder)
    _check_kwargs(name, kwarg_names, tiny_kwargs)
    _check_kwargs(name, kwarg_names, added_kwargs or {})
    _REGISTRY[name] = _Entry(
        builder, description, dict(tiny_kwargs), kwarg_names, dict(added_kwargs or {})
    )


def _check_kwargs(name: str, kwarg_names: tuple[str, ...], kwargs: Mapping[str, Any]) -> None:
    unknown = sorted(set(kwargs) - set(kwarg_names))
    if unknown:
        raise HistodetectError(
            f"Model {name!r} does not accept {', '.join(unknown)}; "
            f"valid keyword arguments: {', '.join(kwarg_names)}."
        )


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        choices = ", ".join(sorted(_REGISTRY)) or "none registered"
        raise HistodetectError(f"Unknown model {name!r}; choose one of: {choices}.") from None


def model_names() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_REGISTRY)


def model_kwarg_names(name: str) -> tuple[str, ...]:
    """Return the keyword arguments the named model's builder accepts."""
    return _entry(name).kwarg_names


def tiny_model_kwargs(name: str) -> dict[str, Any]:
    """Return a copy of the keyword arguments that build the named model's tiny test variant."""
    return dict(_entry(name).tiny_kwargs)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: Registry name (see `list_models`).
        **kwargs: Builder keyword arguments, e.g. ``input_size_px=32``; every one must be
            accepted by the builder (nothing is dropped silently).

    Returns:
        A freshly initialised model mapping (N, 3, S, S) float input to (N,) logits.

    Raises:
        HistodetectError: If the name or a keyword argument is unknown.
    """
    entry = _entry(name)
    _check_kwargs(name, entry.kwarg_names, kwargs)
    return entry.builder(**kwargs)


def stored_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The builder options of a saved model: `kwargs` as stored, plus the value of each option
    added since (`register_model`'s ``added_kwargs``) that the file does not name.

    A saved spec holds every option its builder had then (`resolved_model_kwargs`); one it lacks
    did not exist, so the model was built without it, which today's default may not reproduce.
    An unknown name is returned unchanged (building it raises the one message for that).
    """
    entry = _REGISTRY.get(name)
    added = entry.added_kwargs if entry is not None else {}
    return {**added, **kwargs}


def resolved_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Every builder option of `name` (except input_size_px) with its value: defaults + `kwargs`.

    Stored in a checkpoint's ModelSpec so that changing a default later never changes what an
    old checkpoint rebuilds.
    """
    entry = _entry(name)
    _check_kwargs(name, entry.kwarg_names, kwargs)
    defaults = {
        p.name: p.default
        for p in inspect.signature(entry.builder).parameters.values()
        if p.name != "input_size_px"
    }
    return {**defaults, **kwargs}


def count_parameters(model: nn.Module) -> int:
    """Return the number of scalar parameters in a model (trainable or not)."""
    return sum(parameter.numel() for parameter in model.parameters())


def _default_parameter_count(name: str) -> int | None:
    if name not in _PARAMETER_COUNTS:
        try:
            _PARAMETER_COUNTS[name] = count_parameters(create_model(name))
        except HistodetectError:
            return None  # optional dependency missing: do not cache, it may be installed later
    return _PARAMETER_COUNTS[name]


def list_models() -> list[ModelInfo]:
    """Describe every registered model, sorted by name.

    Builds each default model once (cached) to count its parameters.
    """
    return [
        ModelInfo(
            name=name,
            description=_REGISTRY[name].description,
            parameter_count=_default_parameter_count(name),
            tiny_kwargs=dict(_REGISTRY[name].tiny_kwargs),
        )
        for name in sorted(_REGISTRY)
    ]
