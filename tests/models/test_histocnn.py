"""histocnn: shapes, heads, option checks."""

from __future__ import annotations

import pytest
import torch

from histodetect.errors import HistodetectError
from histodetect.models import count_parameters, create_model


@pytest.mark.parametrize("size_px", [32, 96])
@pytest.mark.parametrize("head", ["flatten", "gap"])
def test_logits_shape_for_both_heads_and_sizes(size_px: int, head: str) -> None:
    model = create_model("histocnn", input_size_px=size_px, conv_channels=(4, 8), head=head)
    model.eval()
    assert model(torch.rand(3, 3, size_px, size_px)).shape == (3,)


def test_flatten_head_sees_position_gap_head_does_not() -> None:
    """A feature in the centre and the same feature in a corner: the flatten head (which knows
    where the centre 32 px is) scores them differently; global pooling cannot tell them apart
    once the maps are identical up to translation (no padding effects: blob far from borders)."""
    torch.manual_seed(0)
    centre, corner = torch.zeros(1, 3, 96, 96), torch.zeros(1, 3, 96, 96)
    centre[..., 40:56, 40:56] = 1.0
    corner[..., 8:24, 8:24] = 1.0
    x = torch.cat([centre, corner])
    flat = create_model("histocnn", conv_channels=(4, 8), dense_units=8, dropout=0.0).eval()
    gap = create_model("histocnn", conv_channels=(4, 8), dense_units=8, dropout=0.0,
                       head="gap").eval()  # fmt: skip
    with torch.no_grad():
        flat_out, gap_out = flat(x), gap(x)
    assert abs(float(flat_out[0] - flat_out[1])) > 1e-4
    assert abs(float(gap_out[0] - gap_out[1])) < 1e-5


def test_default_size_and_convs_per_block() -> None:
    default = create_model("histocnn")
    assert 4_900_000 < count_parameters(default) < 5_100_000
    assert sum(isinstance(m, torch.nn.Conv2d) for m in default.modules()) == 6  # 2 per block
    single = create_model("histocnn", conv_channels=(4, 8), convs_per_block=1)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in single.modules()) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"conv_channels": ()}, "at least one block"),
        ({"head": "avg"}, "head 'avg'"),
        ({"dropout": 1.0}, "dropout"),
        ({"input_size_px": 4, "conv_channels": (4, 4, 4)}, "at least 8 px"),
    ],
)
def test_bad_options_are_one_sentence(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(HistodetectError, match=match):
        create_model("histocnn", **kwargs)
