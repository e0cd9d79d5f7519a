"""histocnn: shapes, heads, option checks."""

from __future__ import annotations

import itertools

import pytest
import torch

from histodetect.errors import HistodetectError
from histodetect.models import count_parameters, create_model
from histodetect.models.histocnn import instance_standardise
from histodetect.models.pool_order import relu_before_pool


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
    # input_norm off: it would turn the zero background into a constant that the convs' zero
    # padding then tells apart near the borders
    tiny = {"conv_channels": (4, 8), "dense_units": 8, "dropout": 0.0, "input_norm": "none"}
    flat = create_model("histocnn", **tiny).eval()
    gap = create_model("histocnn", **tiny, head="gap").eval()
    with torch.no_grad():
        flat_out, gap_out = flat(x), gap(x)
    assert abs(float(flat_out[0] - flat_out[1])) > 1e-4
    assert abs(float(gap_out[0] - gap_out[1])) < 1e-5


def test_default_size_and_convs_per_block() -> None:
    default = create_model("histocnn")
    assert 1_700_000 < count_parameters(default) < 1_800_000  # 4 blocks: a 128 x 6 x 6 flatten
    assert sum(isinstance(m, torch.nn.Conv2d) for m in default.modules()) == 8  # 2 per block
    single = create_model("histocnn", conv_channels=(4, 8), convs_per_block=1)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in single.modules()) == 2


def test_instance_input_norm_ignores_each_patch_s_stain_offset_and_strength() -> None:
    """input_norm=instance: a patch whose channels are shifted and scaled (a paler or stronger
    stain, another scanner's white balance) gets the same logit; without it, another one."""
    torch.manual_seed(0)
    x = torch.rand(4, 3, 96, 96) * 2 - 1
    gain, offset = torch.tensor([1.6, 0.7, 1.2]), torch.tensor([0.4, -0.3, 0.1])
    restained = x * gain.view(1, 3, 1, 1) + offset.view(1, 3, 1, 1)
    kwargs = {"conv_channels": (4, 8), "dense_units": 8, "dropout": 0.0}
    normed = create_model("histocnn", input_norm="instance", **kwargs).eval()
    torch.manual_seed(0)
    plain = create_model("histocnn", input_norm="none", **kwargs).eval()
    with torch.no_grad():
        assert torch.allclose(normed(x), normed(restained), atol=1e-5)
        assert not torch.allclose(plain(x), plain(restained), atol=1e-3)
        # a near-blank patch is amplified at most 1 / INSTANCE_STD_FLOOR, not to unit spread
        blank = torch.full((1, 3, 96, 96), 0.8) + 1e-3 * torch.randn(1, 3, 96, 96)
        assert bool(torch.isfinite(normed(blank)).all())
        assert float(instance_standardise(blank).abs().max()) < 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"conv_channels": ()}, "at least one block"),
        ({"head": "avg"}, "head 'avg'"),
        ({"dropout": 1.0}, "dropout"),
        ({"input_norm": "reinhard"}, "input_norm 'reinhard'"),
        ({"input_size_px": 4, "conv_channels": (4, 4, 4)}, "at least 8 px"),
    ],
)
def test_bad_options_are_one_sentence(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(HistodetectError, match=match):
        create_model("histocnn", **kwargs)


@pytest.mark.parametrize(
    ("name", "size", "kwargs"),
    [("histocnn", 96, {"conv_channels": (4, 8)}), ("seed_cnn", 45, {"input_size_px": 45})],
)
def test_relu_after_the_pool_is_the_textbook_network(
    name: str, size: int, kwargs: dict[str, object]
) -> None:
    """The blocks run max-pool before their last ReLU (faster); values, gradients and parameter
    names are those of conv-ReLU-pool (`relu_before_pool`, which export uses), so older
    checkpoints load and train the same. The odd seed_cnn size checks the pool's floor rounding
    too."""
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    textbook = relu_before_pool(model)
    assert _pools_before_relu(model) == _n_pools(model) > 0  # every pool runs before a ReLU
    assert _pools_before_relu(textbook) == 0  # the copy is the textbook order
    assert list(model.state_dict()) == list(textbook.state_dict())
    x = torch.randn(4, 3, size, size)
    x_copy = x.clone().requires_grad_()
    x.requires_grad_()
    model(x).sum().backward()
    textbook(x_copy).sum().backward()
    assert torch.equal(model(x), textbook(x_copy))
    assert torch.equal(x.grad, x_copy.grad)
    for (key, p), (_, q) in zip(model.named_parameters(), textbook.named_parameters(), strict=True):
        assert p.grad is not None and torch.equal(p.grad, q.grad), key


def _n_pools(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def _pools_before_relu(model: torch.nn.Module) -> int:
    """MaxPool2d modules directly followed by a ReLU in their Sequential."""
    count = 0
    for block in model.modules():
        if isinstance(block, torch.nn.Sequential):
            children = list(block)
            pairs = itertools.pairwise(children)
            count += sum(isinstance(a, torch.nn.MaxPool2d) and isinstance(b, torch.nn.ReLU)
                         for a, b in pairs)  # fmt: skip
    return count
