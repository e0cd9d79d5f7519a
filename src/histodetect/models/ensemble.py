"""Ensembles: the mean logit of several trained models that share one preprocessing.

Averaging a few independently trained models (different seeds) is one of the most reliable
ways to gain on *new* data: their errors on unseen slides are partly independent, so the
average ranks patches better than any member, at the cost of one forward pass per member.
An ensemble is an ordinary registered model (``ensemble``, option ``members``), so its
model.pt goes everywhere a single model goes (evaluate, calibrate, predict, slide, serve),
through the same ModelSpec and the same preprocessing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histodetect.errors import HistodetectError
from histodetect.models.registry import (
    create_model,
    register_model,
    resolved_model_kwargs,
    stored_model_kwargs,
)


class Ensemble(nn.Module):
    """Mean of the members' logits; (N, 3, S, S) → (N,).

    Args:
        members: Models mapping the same input to (N,) logits.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, 3, S, S) float images to the (N,) mean of the members' logits."""
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


def _member(index: int, entry: Any, input_size_px: int) -> nn.Module:
    if not isinstance(entry, Mapping) or set(entry) != {"model", "kwargs"}:
        raise HistodetectError(
            f"ensemble member {index} must be {{'model': name, 'kwargs': {{...}}}}, got {entry!r}."
        )
    if entry["model"] == "ensemble":
        raise HistodetectError("an ensemble cannot contain another ensemble.")
    name = str(entry["model"])  # members are saved models: options added since get their old value
    return create_model(
        name, input_size_px=input_size_px, **stored_model_kwargs(name, entry["kwargs"])
    )


def build_ensemble(
    *, input_size_px: int = 96, members: Sequence[Mapping[str, Any]] = ()
) -> nn.Module:
    """Build an ensemble from member descriptions ``{"model": name, "kwargs": {...}}``.

    Raises:
        HistodetectError: With fewer than two members, or a malformed or nested member.
    """
    if len(members) < 2:
        raise HistodetectError("an ensemble needs at least two members (make one with "
                               "`histodetect ensemble MODEL MODEL ... --out model.pt`).")  # fmt: skip
    return Ensemble([_member(i, entry, input_size_px) for i, entry in enumerate(members)])


def _check_members(loaded: Sequence[Any]) -> None:
    """Refuse a member that is an ensemble (no command could load the result) and a model given
    twice (the same model at twice the cost, which its calibration would then report on)."""
    from histodetect.models.checkpoint import weights_checksum

    seen: dict[str, Path] = {}
    for member in loaded:
        if member.spec.model_name == "ensemble":
            raise HistodetectError(
                f"{member.path} is itself an ensemble, and an ensemble cannot contain another; "
                "give the models it was made of instead."
            )
        checksum = weights_checksum(member.model.state_dict())
        if checksum in seen:
            raise HistodetectError(
                f"{member.path} has the same weights as {seen[checksum]}: an ensemble of one "
                "model twice is that model at twice the cost; give different models."
            )
        seen[checksum] = member.path


def make_ensemble(model_paths: Sequence[Path | str], out: Path | str) -> Path:
    """Combine trained models into one ensemble model file (uncalibrated: temperature 1,
    threshold 0.5; run `histodetect calibrate` on it next).

    Raises:
        HistodetectError: Fewer than two models, or models whose preprocessing differs (patch
            size, crop, mean/std), which one shared input cannot serve.
    """
    from histodetect.models.checkpoint import load_checkpoint, save_model

    if len(model_paths) < 2:
        raise HistodetectError("give at least two models to combine into an ensemble.")
    loaded = [load_checkpoint(path) for path in model_paths]
    _check_members(loaded)
    _check_same_inputs(loaded)
    first = loaded[0].spec
    members = [{"model": m.spec.model_name,
                "kwargs": resolved_model_kwargs(m.spec.model_name, m.spec.model_kwargs)}
               for m in loaded]  # fmt: skip
    model = Ensemble([m.model for m in loaded])
    spec = first.replace(model_name="ensemble", model_kwargs={"members": members},
                         temperature=1.0, threshold=0.5)  # fmt: skip
    metadata: dict[str, Any] = {"ensemble_of": [{"path": str(m.path), "best_val_auc": m.metadata.get(
        "best_val_auc"), "store_fingerprint": m.metadata.get("store_fingerprint")} for m in loaded]}  # fmt: skip
    fingerprints = {m.metadata.get("store_fingerprint") for m in loaded}
    if len(fingerprints) == 1:
        metadata["store_fingerprint"] = fingerprints.pop()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(out, model, spec, metadata)
    return out


register_model(
    "ensemble",
    build_ensemble,
    description=(
        "Mean logit of several trained models (members=[{model, kwargs}, ...]); made from "
        "trained runs by `histodetect ensemble`, not trained directly."
    ),
    tiny_kwargs={
        "members": [
            {"model": "histocnn", "kwargs": {"conv_channels": [4, 8], "dense_units": 8}},
            {"model": "seed_cnn", "kwargs": {"conv_channels": [4, 8, 8], "dense_units": 8}},
        ]
    },
)


def _check_same_inputs(loaded: Sequence[Any]) -> None:
    """Refuse members that see their input otherwise than the first: another patch size or
    crop, or another mean and std.

    Raises:
        HistodetectError: naming the member and, for the statistics, why seeds differ there.
    """
    first = loaded[0].spec
    for other in loaded[1:]:
        same = (other.spec.patch_size_px, other.spec.crop_px) == (first.patch_size_px,
                                                                  first.crop_px)  # fmt: skip
        close = all(abs(a - b) < 1e-4 for a, b in zip(other.spec.mean + other.spec.std,
                                                      first.mean + first.std, strict=True))  # fmt: skip
        if not same:
            raise HistodetectError(
                f"{other.path} is preprocessed differently from {loaded[0].path} (patch size "
                "or crop); an ensemble needs members trained on the same inputs."
            )
        if not close:  # from a README walk: two seeds on a store without a valid split
            raise HistodetectError(
                f"{other.path} normalises its input with another mean and std than "
                f"{loaded[0].path}: they were fitted on other training patches (on a store "
                "without a valid split each --seed draws its own split); give the store a "
                "valid split (split folders or a split column at ingest) and train the seeds "
                "on it."
            )
