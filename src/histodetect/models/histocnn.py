"""HistoCNN: plain conv/BatchNorm/max-pool blocks with a spatial MLP head (the default family).

Why this family (issue 7, measured in docs/BENCHMARKS.md): on 20,000 PCam patches, plain
Conv-BN-ReLU-MaxPool blocks with a head that sees the whole spatial map (flatten → dense →
dropout → logit) generalised to new slides far better than residual nets with global average
pooling at equal data and epochs. The label is about the centre 32 px: a global-average-pool
head cannot tell a tumour cell in the centre (label 1) from one in the outer ring (label 0),
whereas a flatten head keeps *where* each feature is. Max-pooling keeps the strongest local
response (a few tumour nuclei) instead of averaging it away.

Layout for a 96 px input with the default widths 32-64-128-128, two ``padding=1`` convs per
block (VGG-style) and a 2x2 max-pool after each block: maps of 96 → 48 → 24 → 12 → 6 px, a
128 x 6 x 6 = 4,608-value flatten, Dense(256), dropout, one logit: 1.8 M parameters. Two convs
per block rather than one (issue 7, docs/BENCHMARKS.md): with one, the family underfit the
training slides (training AUC 0.92 after 12 epochs, in this pipeline and in a plain PyTorch
loop alike); the second conv widens the receptive field (22 → 36 px at the third map) and
adds non-linearity, for about 3x the compute. The fourth block (issue 7) sees 76 px of
context at its map for 12% more compute, and shrinks the dense head (and the file) by four.
Each image is standardised per channel by its own mean and spread before the first conv
(``input_norm="instance"``, the default since 8 Dec): on two seeds of the default recipe it raised
valid AUC from 0.9489 / 0.9518 to 0.9555 / 0.9556 and the mean AUC under six seeded image shifts
from 0.923 / 0.925 to 0.942 / 0.944 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from histodetect.errors import HistodetectError
from histodetect.models.registry import register_model

HEADS = ("flatten", "gap")
"""``flatten``: dense layer over the whole spatial map (knows position); ``gap``: global
average pooling (position-blind; kept for ablations)."""

INPUT_NORMS = ("none", "instance")
"""``none``: the spec's fixed (x - mean) / std only; ``instance``: each image's channels are then
also standardised by that image's own mean and spread (`instance_standardise`), a per-patch
stain and brightness normalisation inside the network (so in every exported graph too)."""

INSTANCE_STD_FLOOR = 0.25
"""Smallest per-image spread `instance_standardise` divides by, in the spec's standardised units
(about 0.06 of the [0, 1] pixel range with PCam's std): a blank, near-uniform background patch is
amplified at most 4x instead of having its sensor noise blown up to unit spread."""


def instance_standardise(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel, (x - mean) / max(std, floor) over the pixels; computed in float32,
    returned in `x`'s dtype (a bf16 graph's convs take bf16).

    Why (issue 7): slides differ in stain strength and hue far more than patches of one slide do,
    so removing each patch's own channel offset and scale (Reinhard's normalisation, here in the
    network's RGB input space) takes away a nuisance that training slides cannot cover.
    """
    wide = x.float()
    centred = wide - wide.mean(dim=(2, 3), keepdim=True)
    spread = centred.square().mean(dim=(2, 3), keepdim=True).sqrt()
    return (centred / spread.clamp_min(INSTANCE_STD_FLOOR)).to(x.dtype)


def _conv_block(in_channels: int, out_channels: int, n_convs: int) -> nn.Sequential:
    """(Conv-BN-ReLU) x n, then max-pool, computed with the last ReLU after the pool: the same
    network, faster (`histodetect.models.pool_order`)."""
    layers: list[nn.Module] = []
    for index in range(n_convs):
        conv_in = in_channels if index == 0 else out_channels
        layers += [
            nn.Conv2d(conv_in, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    layers[-1:] = [nn.MaxPool2d(2), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class HistoCNN(nn.Module):
    """Conv-BN-ReLU(-Conv-BN-ReLU)-MaxPool blocks, then a spatial MLP head; (N, 3, S, S) → (N,).

    Args:
        input_size_px: Side of the square input; fixes the flatten size of the head.
        conv_channels: Output channels of each block; each block halves the map side.
        convs_per_block: 3x3 convs before each max-pool.
        dense_units: Width of the hidden dense layer.
        dropout: Drop probability before the output layer.
        head: ``flatten`` or ``gap`` (see `HEADS`).
        input_norm: ``none`` or ``instance`` (see `INPUT_NORMS`).
    """

    def __init__(
        self,
        input_size_px: int,
        conv_channels: Sequence[int],
        convs_per_block: int,
        dense_units: int,
        dropout: float,
        head: str,
        input_norm: str = "none",
    ) -> None:
        super().__init__()
        self.input_size_px = input_size_px
        self.input_norm = input_norm
        blocks: list[nn.Module] = []
        in_channels = 3
        for out_channels in conv_channels:
            blocks.append(_conv_block(in_channels, out_channels, convs_per_block))
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        side_px = input_size_px >> len(conv_channels)
        pool: nn.Module = nn.AdaptiveAvgPool2d(1) if head == "gap" else nn.Identity()
        n_inputs = in_channels if head == "gap" else in_channels * side_px * side_px
        self.head = nn.Sequential(
            pool,
            nn.Flatten(),
            nn.Linear(n_inputs, dense_units),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dense_units, 1),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, 3, S, S) float images to (N,) logits."""
        if self.input_norm == "instance":
            x = instance_standardise(x)
        return self.head(self.features(x))[:, 0]


def build_histocnn(
    *,
    input_size_px: int = 96,
    conv_channels: Sequence[int] = (32, 64, 128, 128),
    convs_per_block: int = 2,
    dense_units: int = 256,
    dropout: float = 0.3,
    head: str = "flatten",
    input_norm: str = "instance",
) -> nn.Module:
    """Build a HistoCNN (see the module docstring); defaults are the project's default model.

    Raises:
        HistodetectError: If the input is too small for the blocks or an option is out of range.
    """
    channels = tuple(int(c) for c in conv_channels)
    if not channels or min(channels) < 1 or convs_per_block < 1 or dense_units < 1:
        raise HistodetectError(
            "histocnn needs at least one block, positive conv_channels, convs_per_block and "
            "dense_units."
        )
    if head not in HEADS:
        raise HistodetectError(f"histocnn head {head!r} is not one of {', '.join(HEADS)}.")
    if input_norm not in INPUT_NORMS:
        raise HistodetectError(
            f"histocnn input_norm {input_norm!r} is not one of {', '.join(INPUT_NORMS)}."
        )
    if not 0 <= dropout < 1:
        raise HistodetectError(f"histocnn dropout must lie in [0, 1), got {dropout}.")
    if input_size_px >> len(channels) < 1:
        raise HistodetectError(
            f"histocnn with {len(channels)} blocks needs inputs of at least "
            f"{1 << len(channels)} px, got {input_size_px}."
        )
    return HistoCNN(
        input_size_px, channels, convs_per_block, dense_units, dropout, head, input_norm
    )


register_model(
    "histocnn",
    build_histocnn,
    description=(
        "Default: per-image channel standardisation, 4 x (2 x conv3x3-BN-ReLU + max-pool) "
        "32-64-128-128, flatten + dense 256 + dropout; a head that knows where the centre 32 px is."
    ),
    tiny_kwargs={"conv_channels": (4, 8), "dense_units": 8},
    # Models saved before input_norm existed (the bundled model until 8 Dec included) ran without it.
    added_kwargs={"input_norm": "none"},
)
