"""The original write-up's small Keras CNN, rebuilt faithfully in PyTorch as ``seed_cnn``.

Taken from the write-up (Keras ``Sequential``):

* three feature blocks ``Conv2D(c, 3, activation="relu") → MaxPooling2D(2)`` with
  c = 32, 64, 128; Keras defaults: ``padding="valid"`` (no padding), stride 1, bias on, pooling
  window 2 with stride 2 and floor rounding;
* ``Flatten → Dense(256, relu) → Dropout(0.5) → Dense(1, sigmoid)``;
* input 96x96x3 scaled to [0, 1] (or its centre 32x32 crop), binary cross-entropy, Adam;
* Keras' default initialisation: Glorot-uniform kernels, zero biases.

Differences, on purpose:

* The final sigmoid is NOT in the module: it returns one logit per patch, and the sigmoid lives
  in the loss (``BCEWithLogitsLoss``, the numerically stable form of sigmoid + BCE) and in
  consumers (`histodetect.models.spec.logits_to_probability`).
* PyTorch is channels-first: input is (N, 3, S, S), not (N, S, S, 3).

Spatial size with valid 3x3 conv then 2x2 pool: ``s → (s - 2) // 2`` per block, so
96 → 47 → 22 → 10 (Flatten 12 800) and 32 → 15 → 6 → 2 (Flatten 512). The smallest input that
still leaves a 1x1 map after three blocks is 22 px.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from histodetect.errors import HistodetectError
from histodetect.models.registry import register_model


def feature_map_side_px(input_size_px: int, n_blocks: int) -> int:
    """Return the side of the map left after ``n_blocks`` valid 3x3 conv + 2x2 pool blocks."""
    side_px = input_size_px
    for _ in range(n_blocks):
        side_px = (side_px - 2) // 2
    return side_px


class SeedCNN(nn.Module):
    """Conv/pool feature blocks, Flatten, Dense(relu), Dropout, Dense(1) logit.

    Args:
        input_size_px: Side of the square input in pixels; fixes the Flatten size.
        conv_channels: Output channels of each conv block (write-up: 32, 64, 128).
        dense_units: Width of the hidden dense layer (write-up: 256).
        dropout: Drop probability before the output layer (write-up: 0.5).
    """

    def __init__(
        self,
        input_size_px: int = 96,
        conv_channels: Sequence[int] = (32, 64, 128),
        dense_units: int = 256,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        side_px = feature_map_side_px(input_size_px, len(conv_channels))
        if side_px < 1:
            raise HistodetectError(
                f"seed_cnn needs larger inputs than {input_size_px} px for "
                f"{len(conv_channels)} conv blocks."
            )
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in conv_channels:
            # Keras' Conv2D(relu) -> MaxPooling2D, with the ReLU after the pool: the same
            # values and gradients, faster (histodetect.models.pool_order).
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3),
                nn.MaxPool2d(kernel_size=2),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * side_px * side_px, dense_units),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dense_units, 1),
        )
        self._init_like_keras()

    def _init_like_keras(self) -> None:
        """Glorot-uniform weights and zero biases, as Keras' Conv2D and Dense default to."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, 3, S, S) float images to (N,) logits."""
        return self.classifier(self.features(x))[:, 0]


def build_seed_cnn(
    *,
    input_size_px: int = 96,
    conv_channels: Sequence[int] = (32, 64, 128),
    dense_units: int = 256,
    dropout: float = 0.5,
) -> nn.Module:
    """Build the write-up's CNN (see the module docstring for what is faithful)."""
    return SeedCNN(input_size_px, tuple(conv_channels), dense_units, dropout)


register_model(
    "seed_cnn",
    build_seed_cnn,
    description=(
        "The original write-up's Keras CNN: 3 x (valid conv3x3 + maxpool), "
        "Dense(256) + dropout 0.5, one logit."
    ),
    tiny_kwargs={"conv_channels": (4, 8, 8), "dense_units": 8},
)
