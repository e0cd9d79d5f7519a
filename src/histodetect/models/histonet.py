"""HistoNet: the default from-scratch residual family, sized for 96 px H&E patches.

Why this family is the default:

* ImageNet ResNets open with a stride-2 7x7 conv and a stride-2 max-pool, so a 96 px patch is
  already 24x24 after the stem; the centre 32x32 px that decides the label is then only 8x8
  cells wide. Trained from scratch on PCam a ResNet-18 scored about 0.91 AUC against about 0.95
  for a small CNN with augmentation. HistoNet keeps the residual blocks (easy to optimise,
  BatchNorm for fast training) but downsamples only 2x in the stem (3x3 conv, stride 2,
  configurable to 1), then 2x between stages: 96 → 48 → 24 → 12 → 6 px maps.
* Four stages of BasicBlocks (3x3 conv-BN-ReLU-3x3 conv-BN + identity or 1x1 projection
  shortcut), widths ``width * (1, 2, 4, 8)``, global average pooling (so any input side
  S >= 32 works, including 32 px centre crops), dropout, and a Linear to one logit.
* The last BatchNorm of each residual branch starts at zero (each block starts as identity),
  and convs use He initialisation: standard recipe for training ResNets from scratch.
* channels_last-friendly: no ``view``; the head uses ``torch.flatten``.

Variants (parameter counts at 96 px; CPU training throughput, batch 128, AdamW, 2 threads,
measured on the project's 2-core development machine; GPU not measured):

* ``histonet_s``: width 16, one block per stage, ~0.70 M parameters, ~440 img/s on CPU
  (seed_cnn: ~3.4 M parameters, ~290 img/s). The default: fast enough to train on a laptop
  CPU, four times the seed's depth with a fifth of its parameters.
* ``histonet_m``: width 32, two blocks per stage, ~4.8 M parameters, for GPU training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from histodetect.errors import HistodetectError
from histodetect.models.registry import register_model

MIN_INPUT_SIZE_PX = 32
"""Smallest input side HistoNet accepts (the PCam centre crop)."""


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual shortcut, as in ResNet-18/34.

    Args:
        in_channels: Channels of the input map.
        out_channels: Channels of the output map.
        stride: Stride of the first conv (2 halves the map side).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return relu(branch(x) + shortcut(x)); output side is ceil(input side / stride)."""
        return self.relu(self.branch(x) + self.shortcut(x))


class HistoNet(nn.Module):
    """Residual CNN without the ImageNet 4x stem downsampling; (N, 3, S, S) → (N,) logits.

    Args:
        stage_widths: Output channels of each stage (the stem has ``stage_widths[0]``); every
            stage after the first starts with a stride-2 block.
        blocks_per_stage: Number of BasicBlocks in each stage, same length as ``stage_widths``.
        stem_stride: Stride of the 3x3 stem conv (1 keeps full resolution, 2 halves it).
        dropout: Drop probability before the final Linear.
    """

    def __init__(
        self,
        stage_widths: Sequence[int] = (16, 32, 64, 128),
        blocks_per_stage: Sequence[int] = (1, 1, 1, 1),
        stem_stride: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stage_widths[0], 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(stage_widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        in_channels = stage_widths[0]
        for stage_index, (out_channels, n_blocks) in enumerate(
            zip(stage_widths, blocks_per_stage, strict=True)
        ):
            for block_index in range(n_blocks):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_channels, 1)
        self._initialise()

    def _initialise(self) -> None:
        """He-normal convs, unit BatchNorm, zero last BatchNorm of each residual branch."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, BasicBlock):
                last_norm = module.branch[-1]
                assert isinstance(last_norm, nn.BatchNorm2d)
                nn.init.zeros_(last_norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, 3, S, S) float images to (N,) logits."""
        features = self.pool(self.stages(self.stem(x)))
        return self.head(self.dropout(torch.flatten(features, 1)))[:, 0]


def build_histonet(
    *,
    input_size_px: int = 96,
    stage_widths: Sequence[int] = (16, 32, 64, 128),
    blocks_per_stage: Sequence[int] = (1, 1, 1, 1),
    stem_stride: int = 2,
    dropout: float = 0.2,
) -> nn.Module:
    """Build a HistoNet; ``input_size_px`` is only checked (global pooling fits any side)."""
    if input_size_px < MIN_INPUT_SIZE_PX:
        raise HistodetectError(
            f"HistoNet needs inputs of at least {MIN_INPUT_SIZE_PX} px, got {input_size_px}."
        )
    widths, depths = tuple(stage_widths), tuple(blocks_per_stage)
    if not widths or len(widths) != len(depths) or min(widths) < 1 or min(depths) < 1:
        raise HistodetectError(
            "HistoNet needs equally long, positive stage_widths and blocks_per_stage."
        )
    if stem_stride not in (1, 2):
        raise HistodetectError(f"HistoNet stem_stride must be 1 or 2, got {stem_stride}.")
    return HistoNet(widths, depths, stem_stride, dropout)


def build_histonet_s(
    *, input_size_px: int = 96, width: int = 16, dropout: float = 0.2
) -> nn.Module:
    """The default CPU-friendly HistoNet: one BasicBlock per stage, widths w-2w-4w-8w."""
    return build_histonet(
        input_size_px=input_size_px,
        stage_widths=(width, 2 * width, 4 * width, 8 * width),
        blocks_per_stage=(1, 1, 1, 1),
        dropout=dropout,
    )


def build_histonet_m(
    *, input_size_px: int = 96, width: int = 32, dropout: float = 0.3
) -> nn.Module:
    """The wider GPU HistoNet: two BasicBlocks per stage, widths w-2w-4w-8w."""
    return build_histonet(
        input_size_px=input_size_px,
        stage_widths=(width, 2 * width, 4 * width, 8 * width),
        blocks_per_stage=(2, 2, 2, 2),
        dropout=dropout,
    )


register_model(
    "histonet",
    build_histonet,
    description="HistoNet with every knob exposed (stage_widths, blocks_per_stage, stem_stride).",
    tiny_kwargs={"stage_widths": (4, 8), "blocks_per_stage": (1, 1)},
)
register_model(
    "histonet_s",
    build_histonet_s,
    description="Default: small residual CNN, stem stride 2, widths 16-128; trains fast on CPU.",
    tiny_kwargs={"width": 4},
)
register_model(
    "histonet_m",
    build_histonet_m,
    description="Wider, deeper HistoNet (widths 32-256, 2 blocks per stage) for GPU training.",
    tiny_kwargs={"width": 4},
)
