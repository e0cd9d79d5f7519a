"""Tests for batched on-device augmentation (D4, HED stain jitter, blur, colour jitter, mixup)."""

from __future__ import annotations

import json

import pytest
import torch

from histodetect.augment import (
    AugmentConfig,
    apply_augment,
    apply_d4,
    colour_jitter,
    d4_mean,
    d4_transforms,
    gaussian_blur,
    hed_jitter,
    invert_d4,
    mixup,
    random_blur,
    random_d4,
    random_d4_with_index,
)
from histodetect.errors import HistodetectError


def _images(n: int = 4, side_px: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, side_px, side_px, generator=torch.Generator().manual_seed(seed))


def _tissue_like(n: int = 4, side_px: int = 16) -> torch.Tensor:
    """Pinkish-purple images away from 0 and 1, so jitter is not hidden by clamping."""
    return 0.3 + 0.5 * _images(n, side_px)


def test_d4_transforms_are_distinct_and_invertible() -> None:
    x = _images(2, 5)
    views = d4_transforms(x)
    assert len(views) == 8
    assert torch.equal(views[0], x)
    for i in range(8):
        assert torch.equal(invert_d4(views[i], i), x)
        for j in range(i):
            assert not torch.equal(views[i], views[j])


def test_d4_is_closed_under_composition() -> None:
    x = _images(1, 5)
    views = d4_transforms(x)
    for i in range(8):
        for j in range(8):
            composed = apply_d4(apply_d4(x, i), j)
            assert any(torch.equal(composed, view) for view in views)


def test_apply_d4_rejects_bad_index() -> None:
    with pytest.raises(HistodetectError):
        apply_d4(_images(), 8)


def test_random_d4_permutes_pixels_and_covers_group() -> None:
    x = _images(256, 6)
    out, k = random_d4_with_index(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    torch.testing.assert_close(
        out.reshape(256, -1).sort(dim=1).values, x.reshape(256, -1).sort(dim=1).values
    )
    assert set(k.tolist()) == set(range(8))
    for i in range(0, 256, 17):
        assert torch.equal(out[i], apply_d4(x[i], int(k[i])))


def test_random_d4_handles_channels_last_and_rejects_non_square() -> None:
    x = _images(8, 6)
    seed = torch.Generator().manual_seed(3)
    expected = random_d4(x, seed)
    seed = torch.Generator().manual_seed(3)
    got = random_d4(x.contiguous(memory_format=torch.channels_last), seed)
    assert torch.equal(got, expected)
    with pytest.raises(HistodetectError, match="square"):
        random_d4(torch.rand(2, 3, 4, 6))


def test_d4_mean_of_invariant_predictor_is_unchanged() -> None:
    x = _images(3, 8)

    def mean_intensity(batch: torch.Tensor) -> torch.Tensor:
        return batch.mean(dim=(1, 2, 3))

    torch.testing.assert_close(d4_mean(mean_intensity, x), mean_intensity(x))

    def top_left(batch: torch.Tensor) -> torch.Tensor:
        return batch[:, 0, 0, 0]

    corners = x[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]].mean(dim=1)
    torch.testing.assert_close(d4_mean(top_left, x), corners)


def test_hed_jitter_zero_strength_is_identity() -> None:
    x = _images(4, 16)
    x[0] = 0.0
    x[1] = 1.0
    out = hed_jitter(x, sigma=0.0, bias=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)


def test_hed_jitter_changes_colours_within_range() -> None:
    x = _tissue_like()
    out = hed_jitter(x, sigma=0.2, bias=0.2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((out - x).abs().mean()) > 1e-2


def test_hed_jitter_keeps_pure_haematoxylin_on_its_stain_vector() -> None:
    # A pure-haematoxylin pixel stays on the haematoxylin OD direction under multiplicative jitter.
    haematoxylin_od = torch.tensor([0.65, 0.70, 0.29])
    x = torch.exp(-haematoxylin_od).reshape(1, 3, 1, 1).repeat(2, 1, 2, 2)
    out = hed_jitter(x, sigma=0.3, bias=0.0, generator=torch.Generator().manual_seed(0))
    od = -torch.log(out[:, :, 0, 0])
    ratios = od / haematoxylin_od
    torch.testing.assert_close(ratios, ratios[:, :1].expand_as(ratios), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ratios[:, 0], torch.ones(2), atol=1e-3)


def test_hed_jitter_bias_alone_tints_white_background() -> None:
    white = torch.ones(4, 3, 4, 4)
    scaled = hed_jitter(white, sigma=0.3, bias=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(scaled, white)  # no stain to scale on blank glass
    shifted = hed_jitter(white, sigma=0.0, bias=0.1, generator=torch.Generator().manual_seed(0))
    assert float((shifted - white).abs().amax()) > 1e-2


def test_colour_jitter_range_and_zero_strength() -> None:
    x = _tissue_like()
    same = colour_jitter(x, 0.0, 0.0, 0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x)
    out = colour_jitter(x, 0.5, 0.5, 0.5, generator=torch.Generator().manual_seed(0))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((out - x).abs().mean()) > 1e-2


def test_gaussian_blur_matches_scipy_per_image() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _images(3, 20)
    sigma = torch.tensor([0.0, 0.7, 1.5])
    out = gaussian_blur(x, sigma, max_sigma=1.5)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out[0], x[0], atol=1e-6, rtol=0)  # sigma 0: unchanged
    for i in (1, 2):
        # torch's "reflect" padding is scipy's "mirror"; radius ceil(3 * max_sigma) = 5.
        expected = ndimage.gaussian_filter(
            x[i].numpy(), float(sigma[i]), mode="mirror", radius=5, axes=(1, 2)
        )
        torch.testing.assert_close(out[i], torch.from_numpy(expected), atol=1e-5, rtol=0)


def test_random_blur_smooths_and_keeps_the_mean() -> None:
    x = _tissue_like(8, 32)
    out = random_blur(x, 1.5, torch.Generator().manual_seed(0))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # Less pixel-to-pixel variation, the same average colour (a blur moves no mass).
    assert float(out.diff(dim=3).abs().mean()) < 0.8 * float(x.diff(dim=3).abs().mean())
    torch.testing.assert_close(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=5e-3, rtol=0)
    assert torch.equal(random_blur(x, 0.0), x)


def test_blur_is_off_by_default_and_draws_nothing_then() -> None:
    # Existing runs reproduce exactly: with blur off, apply_augment draws what it drew before.
    x = _tissue_like(8, 12)
    assert not AugmentConfig().blur
    plain = apply_augment(x, AugmentConfig(), torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    expected = colour_jitter(
        hed_jitter(random_d4(x, generator), 0.1, 0.1, generator), 0.15, 0.2, 0.2, generator
    )
    assert torch.equal(plain, expected)
    blurred = apply_augment(x, AugmentConfig(blur=True), torch.Generator().manual_seed(5))
    again = apply_augment(x, AugmentConfig(blur=True), torch.Generator().manual_seed(5))
    assert torch.equal(blurred, again) and not torch.equal(blurred, plain)


def test_same_seed_same_output_different_seed_differs() -> None:
    x = _tissue_like(8, 12)
    cfg = AugmentConfig()
    first = apply_augment(x, cfg, torch.Generator().manual_seed(5))
    second = apply_augment(x, cfg, torch.Generator().manual_seed(5))
    other = apply_augment(x, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_none_config_leaves_input_unchanged() -> None:
    x = _images()
    assert torch.equal(apply_augment(x, AugmentConfig.none()), x)


def test_config_round_trip_and_validation() -> None:
    cfg = AugmentConfig(hed_sigma=0.1, colour=False)
    assert AugmentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert AugmentConfig.from_dict({}) == AugmentConfig()
    with pytest.raises(HistodetectError, match="unknown augmentation keys"):
        AugmentConfig.from_dict({"sharpen": True})
    with pytest.raises(HistodetectError):
        AugmentConfig(brightness=-0.1)
    with pytest.raises(HistodetectError, match="blur_sigma"):
        AugmentConfig(blur_sigma=6.0)
    with pytest.raises(HistodetectError):
        AugmentConfig(d4="yes")  # type: ignore[arg-type]


def test_rejects_non_float_images() -> None:
    with pytest.raises(HistodetectError):
        apply_augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), AugmentConfig())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_cuda_matches_shapes_and_is_deterministic() -> None:
    x = _tissue_like(16, 32).cuda()
    first = apply_augment(x, AugmentConfig(), torch.Generator("cuda").manual_seed(0))
    second = apply_augment(x, AugmentConfig(), torch.Generator("cuda").manual_seed(0))
    assert first.device == x.device and torch.equal(first, second)


def test_mixup_mixes_images_and_labels_alike_and_keeps_the_majority() -> None:
    # Each image is one flat grey level that is also its "label": a mixed image's grey level
    # must then equal its mixed label, whatever partner and weight were drawn.
    n = 64
    levels = torch.linspace(0.0, 1.0, n)
    x = levels.view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    mixed, soft = mixup(x, levels, 0.4, torch.Generator().manual_seed(3))
    assert mixed.shape == x.shape and soft.shape == levels.shape
    torch.testing.assert_close(mixed[:, 0, 0, 0], soft)
    assert torch.equal(mixed, mixed[:, :1, :1, :1].expand_as(mixed)), "a per-image weight"
    assert not torch.equal(mixed, x), "something was mixed"
    # Binary labels: the image keeps at least half of its own content, so its own label is
    # still the nearer one (what training accuracy and AUC are scored against).
    hard = (torch.arange(n) % 2).float()
    _, soft_hard = mixup(x, hard, 0.4, torch.Generator().manual_seed(3))
    assert float((soft_hard - hard).abs().max()) <= 0.5
    assert float(mixed.min()) >= 0.0 and float(mixed.max()) <= 1.0


def test_mixup_weights_follow_the_folded_beta_and_are_seeded() -> None:
    from scipy import stats

    n, alpha = 20_000, 0.4
    x = torch.zeros(n, 3, 1, 1)
    # Labels 1 in the first half, 0 in the second: an image of the first half whose partner
    # came from the second half has its own weight as its mixed label.
    labels = torch.zeros(n)
    labels[: n // 2] = 1.0
    _, soft = mixup(x, labels, alpha, torch.Generator().manual_seed(0))
    own = soft[: n // 2]
    weights = own[own < 1.0]  # partners from the zero half: soft label = own weight
    assert float(weights.min()) >= 0.5
    expected = stats.beta(alpha, alpha).expect(lambda b: max(b, 1 - b))
    assert abs(float(weights.mean()) - expected) < 0.01
    again = mixup(x, labels, alpha, torch.Generator().manual_seed(0))[1]
    other = mixup(x, labels, alpha, torch.Generator().manual_seed(1))[1]
    assert torch.equal(soft, again) and not torch.equal(soft, other)


def test_mixup_is_off_by_default_and_validated() -> None:
    assert not AugmentConfig().mixup and not AugmentConfig.none().mixup
    with pytest.raises(HistodetectError, match="mixup_alpha"):
        AugmentConfig(mixup=True, mixup_alpha=0.0)
    with pytest.raises(HistodetectError, match="mixup_alpha"):
        AugmentConfig(mixup_alpha=11.0)
    with pytest.raises(HistodetectError, match="alpha"):
        mixup(_images(), torch.zeros(4), 0.0)
