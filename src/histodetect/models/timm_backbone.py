"""Optional ``timm`` backbones (``pip install 'histodetect[timm]'``), imported only when built."""

from __future__ import annotations

import torch
from torch import nn

from histodetect.errors import HistodetectError
from histodetect.models.registry import register_model

INSTALL_HINT = "pip install 'histodetect[timm]'"


class SingleLogit(nn.Module):
    """Wrap a classifier with one output unit so it returns (N,) logits instead of (N, 1).

    Args:
        backbone: Module mapping (N, 3, S, S) images to (N, 1) logits.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, 3, S, S) float images to (N,) logits."""
        return self.backbone(x)[:, 0]


def build_timm_model(
    *,
    input_size_px: int = 96,
    architecture: str = "resnet18",
    pretrained: bool = False,
    drop_rate: float = 0.0,
) -> nn.Module:
    """Build any timm classifier with a single-logit head.

    Args:
        input_size_px: Side of the input; timm CNNs pool globally, so it is not passed on
            (ViT-style architectures may need it and are not supported here).
        architecture: A ``timm.list_models()`` name, e.g. ``"resnet18"`` or ``"efficientnet_b0"``.
        pretrained: Download ImageNet weights (needs network access; then set the spec's
            mean/std to ImageNet's, (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)).
        drop_rate: Dropout before the classifier.

    Raises:
        HistodetectError: If timm is not installed or does not know ``architecture``.
    """
    del input_size_px  # global pooling: any side works
    try:
        import timm  # optional dependency: imported only when this family is built
    except ImportError:
        raise HistodetectError(f"The timm model family needs timm: {INSTALL_HINT}.") from None
    if architecture not in timm.list_models(pretrained=pretrained):
        raise HistodetectError(f"timm has no {'pretrained ' * pretrained}model {architecture!r}.")
    backbone = timm.create_model(
        architecture, pretrained=pretrained, num_classes=1, in_chans=3, drop_rate=drop_rate
    )
    return SingleLogit(backbone)


register_model(
    "timm",
    build_timm_model,
    description=f"Any timm classifier (architecture=...) with one logit; needs {INSTALL_HINT}.",
    tiny_kwargs={"architecture": "resnet10t"},
)
