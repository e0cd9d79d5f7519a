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
    """

    def __init__(
        self,
        input_size_px: int,
        conv_channels: Sequence[int],
        convs_per_block: int,
        dense_units: int,
        dropout: float,
        head: str,
    ) -> None:
        super().__init__()
        self.input_size_px = input_size_px
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
        return self.head(self.features(x))[:, 0]


def build_histocnn(
    *,
    input_size_px: int = 96,
    conv_channels: Sequence[int] = (32, 64, 128, 128),
    convs_per_block: int = 2,
    dense_units: int = 256,
    dropout: float = 0.3,
    head: str = "flatten",
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
    if not 0 <= dropout < 1:
        raise HistodetectError(f"histocnn dropout must lie in [0, 1), got {dropout}.")
    if input_size_px >> len(channels) < 1:
        raise HistodetectError(
            f"histocnn with {len(channels)} blocks needs inputs of at least "
            f"{1 << len(channels)} px, got {input_size_px}."
        )
    return HistoCNN(input_size_px, channels, convs_per_block, dense_units, dropout, head)


register_model(
    "histocnn",
    build_histocnn,
    description=(
        "Default: 4 x (2 x conv3x3-BN-ReLU + max-pool) 32-64-128-128, flatten + dense 256 + dropout; "
        "a head that knows where the centre 32 px is."
    ),
    tiny_kwargs={"conv_channels": (4, 8), "dense_units": 8},
)
