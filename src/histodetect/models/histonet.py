"""HistoNet: the default from-scratch residual family, sized for 96 px H&E patches.

Why this family is the default:

* ImageNet ResNets open with a stride-2 7x7 conv and a stride-2 max-pool, so a 96 px patch is
  already 24x24 after the stem and the centre 32x32 px that decides the label is 8x8 cells.
  Trained from scratch on PCam a ResNet-18 scored about 0.91 AUC against about 0.95 for a
  small CNN with augmentation. HistoNet keeps residual blocks (easy to optimise, BatchNorm)
  but downsamples only 2x in the stem (3x3 conv, stride 2; 1 is allowed), then 2x per stage:
  maps of 48, 24, 12 and 6 px for a 96 px patch.
* Four stages of BasicBlocks (3x3 conv-BN-ReLU-3x3 conv-BN + identity or 1x1-projection
  shortcut), global average pooling (any input side >= 32 px works, including 32 px centre
  crops), dropout, and a Linear to one logit. He-initialised convs; the last BatchNorm of each
  residual branch starts at zero so every block starts as the identity.
* channels_last-friendly: no ``view``; the head uses ``torch.flatten``.

Sizing (forward + backward + AdamW step, batch 128, 96 px, channels_last, 2 threads on the
2-core development CPU; figures vary with load, see docs/BENCHMARKS.md for the measured ones):
``histonet_s`` has widths 16-32-64-128, one block per stage: 0.31 M parameters, 36 M
multiply-adds per patch, about 350 img/s on a quiet machine (seed_cnn: 3.4 M parameters,
78 M multiply-adds, about 90-125 img/s). On CPU the cost sits in the early, high-resolution
stages: widening the first stage from 16 to 24 channels halved throughput, whereas widening
the 6x6 last stage from 128 to 192 cost about 17% (0.53 M parameters, pass
``stage_widths=[16, 32, 64, 192]``). ``histonet_m`` (widths 32-64-128-256, two blocks per
stage: ResNet-18 depth at half its width, 2.8 M parameters, 313 M multiply-adds) is meant
for a GPU.
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


def _check_config(
    input_size_px: int,
    stage_widths: Sequence[int],
    blocks_per_stage: Sequence[int],
    stem_stride: int,
) -> None:
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


def build_histonet(
    *,
    input_size_px: int = 96,
    stage_widths: Sequence[int] = (16, 32, 64, 128),
    blocks_per_stage: Sequence[int] = (1, 1, 1, 1),
    stem_stride: int = 2,
    dropout: float = 0.2,
) -> nn.Module:
    """Build a HistoNet of any shape; defaults equal ``histonet_s``.

    ``input_size_px`` is only checked: global pooling fits any side >= 32 px.
    """
    _check_config(input_size_px, stage_widths, blocks_per_stage, stem_stride)
    return HistoNet(tuple(stage_widths), tuple(blocks_per_stage), stem_stride, dropout)


def build_histonet_s(
    *,
    input_size_px: int = 96,
    stage_widths: Sequence[int] = (16, 32, 64, 128),
    blocks_per_stage: Sequence[int] = (1, 1, 1, 1),
    stem_stride: int = 2,
    dropout: float = 0.2,
) -> nn.Module:
    """Build the default CPU-friendly HistoNet (see the module docstring)."""
    return build_histonet(
        input_size_px=input_size_px,
        stage_widths=stage_widths,
        blocks_per_stage=blocks_per_stage,
        stem_stride=stem_stride,
        dropout=dropout,
    )


def build_histonet_m(
    *,
    input_size_px: int = 96,
    stage_widths: Sequence[int] = (32, 64, 128, 256),
    blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
    stem_stride: int = 2,
    dropout: float = 0.3,
) -> nn.Module:
    """Build the wider, deeper GPU HistoNet (ResNet-18 depth at half its widths)."""
    return build_histonet(
        input_size_px=input_size_px,
        stage_widths=stage_widths,
        blocks_per_stage=blocks_per_stage,
        stem_stride=stem_stride,
        dropout=dropout,
    )


register_model(
    "histonet",
    build_histonet,
    description="HistoNet of any shape (stage_widths, blocks_per_stage, ...); defaults = histonet_s.",
    tiny_kwargs={"stage_widths": (4, 8), "blocks_per_stage": (1, 1)},
)
register_model(
    "histonet_s",
    build_histonet_s,
    description=(
        "Residual CNN, 2x stem downsampling, widths 16-32-64-128, "
        "global average pooling; trains fast on CPU."
    ),
    tiny_kwargs={"stage_widths": (4, 8, 8, 8)},
)
register_model(
    "histonet_m",
    build_histonet_m,
    description=("Wider, deeper HistoNet (widths 32-256, 2 blocks per stage) for GPU training."),
    tiny_kwargs={"stage_widths": (4, 8, 8, 8), "blocks_per_stage": (1, 2, 1, 1)},
)
