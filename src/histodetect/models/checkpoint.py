"""Saving and loading trained models: the one place that turns a file into (model, ModelSpec)."""

from __future__ import annotations

import contextlib
import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histodetect.atomic import temp_sibling
from histodetect.errors import HistodetectError, first_line
from histodetect.modelfiles import (  # noqa: F401 - re-exported where they used to live
    BUNDLED_MODEL,
    MODEL_FILE,
    bundled_model_path,
    resolve_model_path,
)
from histodetect.models.registry import resolved_model_kwargs, stored_model_kwargs
from histodetect.models.spec import ModelSpec, build_model

FORMAT = "histodetect-model"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    """A model ready for inference (eval mode, on the CPU) with its spec and provenance."""

    model: nn.Module
    spec: ModelSpec
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


INT8_MIN_ELEMENTS = 65_536
"""`save_model(int8_weights=True)` stores weight matrices at least this large as int8."""
INT8_SCALE_SUFFIX = ".int8_scale"


def save_model(
    path: Path,
    model: nn.Module,
    spec: ModelSpec,
    metadata: dict[str, Any],
    *,
    int8_weights: bool = False,
) -> None:
    """Write weights + spec + metadata to `path` atomically (temp file, then rename).

    Args:
        int8_weights: store every weight of at least `INT8_MIN_ELEMENTS` values as int8 with
            one float32 scale per output channel (symmetric, max-abs); `load_checkpoint` turns
            them back into float32. About a quarter of the float32 size for a model whose
            weights sit in a few large layers (the bundled model); the loss is measured on the
            bundled file by tests/inference/test_bundled_model.py.
    """
    # every builder option by name, so that a default changed later never changes the rebuild
    # (`stored_model_kwargs` gives an option the file lacks the value from before it existed)
    spec = spec.replace(model_kwargs=resolved_model_kwargs(spec.model_name, spec.model_kwargs))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if int8_weights:
        state = _quantise_int8(state)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_spec": spec.to_dict(),
        "state_dict": state,
        "weights_sha256": weights_checksum(state),
        "metadata": metadata,
    }
    _save_atomic(payload, path)


def _save_atomic(payload: dict[str, Any], path: Path) -> None:
    """torch.save through a temporary sibling renamed into place; an unwritable folder or a
    full disk is one sentence naming the file, and leaves `path` as it was."""
    tmp = temp_sibling(path)
    try:
        torch.save(payload, tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as a RuntimeError
        reason = getattr(exc, "strerror", None) or first_line(exc, 160)
        raise HistodetectError(
            f"cannot write {path} ({reason}); check that its folder is writable and the disk "
            "has room (nothing was changed)."
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def is_model_file(path: Path) -> bool:
    """True when `path` is a model file histodetect wrote (`save_model`)."""
    try:
        return _read(path).get("format") == FORMAT
    except HistodetectError:
        return False


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(
            tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    return digest.hexdigest()


def _quantise_int8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Large floating-point weights as int8 plus a per-output-channel scale (`name` + suffix)."""
    stored: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point() or tensor.ndim < 2 or tensor.numel() < INT8_MIN_ELEMENTS:
            stored[name] = tensor
            continue
        values = tensor.float()
        scale = values.abs().amax(dim=tuple(range(1, values.ndim))).clamp_min(1e-12) / 127
        shape = (-1,) + (1,) * (values.ndim - 1)
        stored[name] = (values / scale.view(shape)).round().clamp(-127, 127).to(torch.int8)
        stored[name + INT8_SCALE_SUFFIX] = scale
    return stored


def _dequantise_int8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo `_quantise_int8`: float32 weights wherever a scale was stored."""
    weights = {k: v for k, v in state.items() if not k.endswith(INT8_SCALE_SUFFIX)}
    for name in weights:
        scale = state.get(name + INT8_SCALE_SUFFIX)
        if scale is not None:
            shape = (-1,) + (1,) * (weights[name].ndim - 1)
            weights[name] = weights[name].float() * scale.view(shape)
    return weights


def _check_weights(file: Path, state: dict[str, Any], expected: str | None) -> None:
    """Refuse damaged weights: a checksum mismatch, or NaN/inf in any floating-point tensor."""
    if expected is not None and weights_checksum(state) != expected:
        raise HistodetectError(
            f"{file} is damaged: its weights do not match the checksum saved with them; "
            "restore the file, or export or download it again."
        )
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise HistodetectError(
                f"{file} holds non-finite weights ({name}); it comes from a diverged run and "
                "cannot make predictions; retrain with a lower --lr."
            )


def update_spec(path: Path, spec: ModelSpec, metadata_update: dict[str, Any] | None = None) -> None:
    """Rewrite the spec (e.g. a fitted threshold and temperature) of an exported model file;
    through a symbolic link, the file it points to (the link stays a link)."""
    path = Path(path).resolve()
    payload = _read(path)
    if payload.get("format") != FORMAT:
        raise HistodetectError(f"{path} is not an exported histodetect model ({MODEL_FILE}).")
    payload["model_spec"] = spec.to_dict()
    payload["metadata"] = {**payload.get("metadata", {}), **(metadata_update or {})}
    _save_atomic(payload, path)


def load_checkpoint(path: Path | str | None = None) -> LoadedModel:
    """Load a model for inference from an exported model.pt, a Lightning .ckpt or a run folder.

    Args:
        path: model file or run folder; None loads the bundled model.
    """
    file = resolve_model_path(path)
    if file.suffix.lower() == ".onnx":
        raise HistodetectError(f"{file} is an ONNX model, which predict, slide, serve and evaluate "
                               "run; this command needs the model.pt it was exported from.")  # fmt: skip
    payload = _read(file)
    spec, state, metadata = _parts(file, payload)
    if payload.get("format") == FORMAT:
        _check_weights(file, state, payload.get("weights_sha256"))
        state = _dequantise_int8(state)
    else:  # a training checkpoint (a run that never exported): no checksum, still no NaN
        _check_weights(file, state, None)
    try:
        model = build_model(spec)
    except HistodetectError as exc:
        raise HistodetectError(
            f"{file} asks for a model this histodetect cannot build: {exc}"
        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        raise HistodetectError(
            f"{file} does not match model {spec.model_name} ({lines[0] if lines else exc}); it was "
            "saved from another architecture or is damaged: export it again from its run folder."
        ) from exc
    model.eval()
    return LoadedModel(model=model, spec=spec, path=file, metadata=metadata)


def _parts(file: Path, payload: dict[str, Any]) -> tuple[ModelSpec, dict[str, Any], dict[str, Any]]:
    """The spec, weights and metadata of a model file or a training checkpoint.

    Raises:
        HistodetectError: naming the file, when a part is missing or of the wrong kind (a file
            torch can read but that histodetect did not write, or whose payload was altered).
    """
    if payload.get("format") == FORMAT:
        spec_dict, state = payload.get("model_spec"), payload.get("state_dict")
        metadata = payload.get("metadata", {})
    elif (
        isinstance(payload.get("hyper_parameters"), dict) and "spec" in payload["hyper_parameters"]
    ):
        spec_dict, raw = payload["hyper_parameters"]["spec"], payload.get("state_dict")
        state = _weights_from_lightning(raw) if isinstance(raw, dict) else None
        metadata = {"epoch": payload.get("epoch"), "global_step": payload.get("global_step")}
    else:
        raise HistodetectError(f"{file} is not a histodetect model or training checkpoint.")
    weights_ok = (
        isinstance(state, dict)
        and bool(state)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    )
    problem = (
        "its model spec is missing or not a mapping" if not isinstance(spec_dict, dict)
        else "its weights are missing or not tensors" if not weights_ok
        else "its metadata is not a mapping" if not isinstance(metadata, dict)
        else None
    )  # fmt: skip
    if problem is not None:
        raise HistodetectError(
            f"{file} is damaged or was not written by histodetect ({problem}); copy it again, "
            "or export it again from its run folder."
        )
    try:
        spec = ModelSpec.from_dict(spec_dict)  # type: ignore[arg-type]
        # an option added to the builder since the file was saved keeps the value it was built with
        spec = spec.replace(model_kwargs=stored_model_kwargs(spec.model_name, spec.model_kwargs))
    except HistodetectError as exc:
        raise HistodetectError(f"{file} holds an invalid model spec: {exc}") from None
    return spec, state, metadata  # type: ignore[return-value]


EMA_PREFIX = "ema.module."
"""Lightning state_dict prefix of the weight average (see training.module); preferred when present."""


def _weights_from_lightning(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The model's weights from a training checkpoint: the EMA average if it has one."""
    prefix = EMA_PREFIX if any(k.startswith(EMA_PREFIX) for k in state_dict) else "model."
    return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}


def load_tensors(path: Path, advice: str) -> Any:
    """`torch.load` of a model file or training checkpoint that histodetect wrote: tensors and
    plain values only (``weights_only``), so a file from elsewhere cannot run code on loading.

    Raises:
        HistodetectError: one sentence naming `path`, what is wrong with it, then `advice`.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # "Unsupported global" (torch 2.4+; "Unsupported class" before) names a class to
        # import: a real pickle of objects. Anything else ("Unsupported operand 120" for a text
        # file) is not a pickle of objects at all.
        said = str(exc).lower()
        if "unsupported global" not in said and "unsupported class" not in said:
            raise HistodetectError(f"{path} is damaged or not a PyTorch file; {advice}") from exc
        raise HistodetectError(
            f"{path} holds Python objects besides tensors, which histodetect does not load "
            f"(loading them could run code): it was not written by histodetect; {advice}"
        ) from exc
    except Exception as exc:  # miniz "failed finding central directory", EOFError, KeyError
        raise HistodetectError(
            f"{path} is damaged, cut short or not a PyTorch file; {advice}"
        ) from exc


def _read(path: Path) -> dict[str, Any]:
    # A training checkpoint (.ckpt) reads the same way: Lightning's loop state is plain values.
    payload = load_tensors(path, "copy it again or give a model.pt that histodetect wrote.")
    if not isinstance(payload, dict):
        raise HistodetectError(f"{path} is not a histodetect model file.")
    return payload
