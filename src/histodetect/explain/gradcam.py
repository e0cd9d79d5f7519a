"""Grad-CAM (captum's LayerGradCam) of single patches, for every registered model family.

Every family splits into a features stage (the last spatial feature map) and a head that turns
it into one logit. Which module is the features stage is one entry per family in
`feature_stage`; an unknown family raises rather than guessing. A model made of `members`
(the ensemble family: the mean of its members' logits) is explained by the sum of its
members' maps for the ensemble's own decision. Pixels are prepared by the
model's own `prepare_batch` (the one preprocessing path), and the class explained is the one
predicted at the spec's calibrated threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from histodetect.errors import HistodetectError
from histodetect.models.spec import ModelSpec, prepare_batch

INSTALL_HINT = "pip install -c constraints.txt -e '.[explain]'"
COLOUR_MAP = "inferno"
MAX_ALPHA = 0.6
"""Weight of the colour map where the attribution is strongest (0 where it is nothing)."""
TARGETS = ("predicted", "tumour", "normal")
BATCH_SIZE = 64


def require_captum() -> ModuleType:
    """`captum.attr`, or a clear error naming the extra to install."""
    try:
        import captum.attr  # optional dependency: the `explain` extra
    except ImportError:
        raise HistodetectError(f"Grad-CAM needs captum: {INSTALL_HINT}.") from None
    return captum.attr


def _feature_table() -> dict[type[nn.Module], Callable[[Any], nn.Module]]:
    """Model class -> its last spatial feature map (the features stage); the head is the rest."""
    from histodetect.models.histocnn import HistoCNN
    from histodetect.models.histonet import HistoNet
    from histodetect.models.seed_cnn import SeedCNN
    from histodetect.models.timm_backbone import SingleLogit

    return {
        HistoCNN: _histocnn_stage,  # a conv block; head = flatten + dense
        HistoNet: lambda model: model.stages,  # stem + residual stages; head = pool + linear
        SeedCNN: lambda model: model.features,  # conv blocks; classifier = flatten + dense
        SingleLogit: _timm_last_stage,  # the backbone's deepest feature_info stage
    }


MIN_CAM_SIDE = 6
"""Grad-CAM of a HistoCNN is taken at its deepest map at least this many cells a side: with a
fifth block the last map is 3 x 3 (32 px cells), too coarse to show where the evidence is."""


def _histocnn_stage(model: Any) -> nn.Module:
    """The deepest block of a HistoCNN whose output map is at least `MIN_CAM_SIDE` a side (the
    last block when none is; four blocks at 96 px: the last, 6 x 6)."""
    blocks = list(model.features)
    sides = [model.input_size_px >> (i + 1) for i in range(len(blocks))]
    fine = [i for i, side in enumerate(sides) if side >= MIN_CAM_SIDE]
    block: nn.Module = blocks[fine[-1] if fine else -1]
    return block


def _timm_last_stage(model: Any) -> nn.Module:
    backbone = model.backbone
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise HistodetectError(
            f"Grad-CAM needs a CNN with feature stages; timm model {type(backbone).__name__} "
            "reports none (feature_info)."
        )
    return backbone.get_submodule(info[-1]["module"])


def feature_stage(model: nn.Module) -> nn.Module:
    """The module whose output is the model's last spatial feature map (N, C, h, w).

    Raises:
        HistodetectError: a model family that has no entry in the table.
    """
    table = _feature_table()
    find = table.get(type(model))
    if find is None:
        known = ", ".join(sorted(cls.__name__ for cls in table))
        raise HistodetectError(
            f"Grad-CAM does not know the model family {type(model).__name__}; it knows {known} "
            "(add the new family to histodetect.explain.gradcam)."
        )
    return find(model)


def explained_parts(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(module, its features stage) pairs whose Grad-CAM maps add up to the model's: the model
    itself, or each member of a model built of `members` (an nn.ModuleList, as an ensemble is).

    Raises:
        HistodetectError: a model (or member) family that has no entry in the table.
    """
    members = getattr(model, "members", None)
    if isinstance(members, nn.ModuleList) and len(members) > 0:
        return [(member, feature_stage(member)) for member in members]
    return [(model, feature_stage(model))]


def gradcam(
    model: nn.Module,
    spec: ModelSpec,
    pixels: np.ndarray,
    *,
    target: str = "predicted",
    device: torch.device | None = None,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Grad-CAM heat of each patch, float32 (n, S, S) in [0, 1], S = spec.patch_size_px.

    Args:
        pixels: uint8 (n, S, S, 3) patches.
        target: "predicted" explains the class predicted at `spec.threshold`; "tumour" the
            evidence for tumour (the logit), "normal" the evidence against (minus the logit).
        device: where to run; default the model's device.
        probabilities: the probabilities reported beside the heat (with --tta, at bf16): the
            "predicted" class is theirs. Without them it is one fp32 view's, which for a patch
            near the threshold could be the other class than the one reported.

    Outside a centre crop (`spec.crop_px`) the model sees nothing, so the heat is 0 there.
    """
    if target not in TARGETS:
        raise HistodetectError(f"Grad-CAM target {target!r} is not one of {', '.join(TARGETS)}.")
    attr = require_captum()
    explained = explained_parts(model)
    device = device or next(model.parameters()).device
    model.eval()
    if probabilities is not None and len(probabilities) != len(pixels):
        raise HistodetectError(
            f"gradcam got {len(probabilities)} probabilities for {len(pixels)} patches."
        )
    parts = [
        _gradcam_batch(attr, model, explained, spec, pixels[i : i + BATCH_SIZE], target, device,
                       None if probabilities is None else probabilities[i : i + BATCH_SIZE])
        for i in range(0, len(pixels), BATCH_SIZE)
    ]  # fmt: skip
    size = spec.patch_size_px
    return np.concatenate(parts) if parts else np.zeros((0, size, size), dtype=np.float32)


def _gradcam_batch(
    attr: ModuleType,
    model: nn.Module,
    explained: list[tuple[nn.Module, nn.Module]],
    spec: ModelSpec,
    pixels: np.ndarray,
    target: str,
    device: torch.device,
    reported: np.ndarray | None,
) -> np.ndarray:
    from histodetect.inference.scoring import logits_to_probabilities

    with torch.enable_grad():
        x = prepare_batch(torch.from_numpy(np.ascontiguousarray(pixels)).to(device), spec)
        x.requires_grad_(True)  # so the feature map has gradients even if weights are frozen
        with torch.no_grad():
            logits = model(x).float()
        sign = torch.full_like(logits, -1.0 if target == "normal" else 1.0)
        if target == "predicted":
            probs = (
                reported
                if reported is not None
                else logits_to_probabilities(logits.cpu().numpy(), spec)
            )
            sign = torch.from_numpy(np.where(probs >= spec.threshold, 1.0, -1.0)).to(logits)

        cams = [
            _layer_cam(attr, part, layer, x, sign / len(explained)) for part, layer in explained
        ]
        total = torch.stack(cams).sum(dim=0)
    heat = total[:, 0].clamp_(min=0).cpu().numpy().astype(np.float32)
    peak = heat.reshape(len(heat), -1).max(axis=1).reshape(-1, 1, 1)
    heat = np.divide(heat, peak, out=np.zeros_like(heat), where=peak > 0)
    return _uncrop(heat, spec)


def _layer_cam(
    attr: ModuleType, part: nn.Module, layer: nn.Module, x: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Grad-CAM (N, 1, H, W) of `weight` * part's logit at `layer`, upsampled to the input."""

    def weighted_logit(inputs: torch.Tensor) -> torch.Tensor:
        return part(inputs).float() * weight

    cam = attr.LayerGradCam(weighted_logit, layer).attribute(x, relu_attributions=True)
    result: torch.Tensor = attr.LayerAttribution.interpolate(
        cam.detach(), tuple(x.shape[2:]), "bilinear"
    )
    return result


def _uncrop(cam: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Place heat over the model's centre crop into full-size (n, S, S) maps."""
    size, crop = spec.patch_size_px, spec.input_size_px
    if crop == size:
        return cam
    full = np.zeros((len(cam), size, size), dtype=np.float32)
    top = (size - crop) // 2
    full[:, top : top + crop, top : top + crop] = cam
    return full


def colour_overlay(pixels: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 (S, S, 3): heat (S, S) in [0, 1] coloured and blended over a uint8 (S, S, 3) patch,
    more opaque where the heat is stronger."""
    from matplotlib import colormaps

    colour = colormaps[COLOUR_MAP](heat)[..., :3] * 255.0
    alpha = (MAX_ALPHA * heat)[..., None]
    return np.rint(pixels * (1.0 - alpha) + colour * alpha).astype(np.uint8)


def gradcam_overlays(
    model: nn.Module, spec: ModelSpec, pixels: np.ndarray, probabilities: np.ndarray | None = None
) -> list[np.ndarray]:
    """Grad-CAM overlays of patches for galleries: one uint8 (S, S, 3) RGB image per patch.

    Args:
        model: a loaded model (e.g. `load_checkpoint(...).model`), on any device.
        spec: its ModelSpec.
        pixels: uint8 (n, S, S, 3) patches.
        probabilities: the ones reported beside the overlays (see `gradcam`).
    """
    heat = gradcam(model, spec, pixels, probabilities=probabilities)
    return [colour_overlay(patch, h) for patch, h in zip(pixels, heat, strict=True)]
