"""Batched on-device augmentation of float (N, 3, H, W) images in [0, 1]: D4, HED, blur, colour.

Every function takes and returns a tensor on the same device, draws its randomness from an
optional ``torch.Generator`` (which must live on that device) in a fixed order, so a seeded
generator reproduces the output exactly, and never synchronises with the host (no ``.item()``,
no boolean-mask indexing), except `mixup`, whose Beta quantiles are computed on the CPU (one
small copy per batch). Works on CPU and CUDA.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from histodetect.errors import HistodetectError, reject_unknown_fields

N_D4 = 8
"""Number of dihedral transforms of a square: 4 rotations x (no flip, horizontal flip)."""

RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
"""Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in scikit-image."""

OD_FLOOR = 1e-6
"""Intensities are clamped to at least this before taking the log (optical density <= 13.8)."""

GREY_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R 601 luma weights for R, G, B (the grey level used by contrast and saturation)."""


def _check_images(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise HistodetectError(
            f"Expected float images of shape (N, 3, H, W), got {x.dtype} {tuple(x.shape)}."
        )


def _uniform(
    shape: tuple[int, ...],
    low: float,
    high: float,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """Draw float32 samples from U(low, high) on ``device``."""
    unit = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return unit * (high - low) + low


# ----------------------------------------------------------------------------- D4 symmetries


def apply_d4(x: torch.Tensor, k: int) -> torch.Tensor:
    """Apply dihedral transform ``k`` in 0..7 to (..., H, W): flip W if k >= 4, then rotate
    by (k % 4) x 90 degrees counter-clockwise. Square images keep their shape."""
    if not 0 <= k < N_D4:
        raise HistodetectError(f"D4 transform index must be in 0..7, got {k}.")
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def invert_d4(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo `apply_d4` with the same ``k``: ``invert_d4(apply_d4(x, k), k) == x``."""
    if not 0 <= k < N_D4:
        raise HistodetectError(f"D4 transform index must be in 0..7, got {k}.")
    x = torch.rot90(x, -(k % 4), dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def d4_transforms(x: torch.Tensor) -> list[torch.Tensor]:
    """Return the 8 dihedral transforms of a batch, index k = `apply_d4`'s k (k=0: identity)."""
    return [apply_d4(x, k) for k in range(N_D4)]


def d4_mean(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation: mean of ``predict`` over the 8 dihedral transforms of ``x``.

    Args:
        predict: Maps an image batch (N, 3, S, S) to per-patch probabilities (N,) (average
            probabilities, not logits).
        x: Image batch (N, 3, S, S).

    Returns:
        (N,) mean of the 8 predictions.
    """
    return torch.stack([predict(view) for view in d4_transforms(x)]).mean(dim=0)


@functools.lru_cache(maxsize=16)
def _d4_pixel_maps(side_px: int, device: torch.device) -> torch.Tensor:
    """(8, side*side) long: flat source-pixel index of each output pixel, per transform."""
    grid = torch.arange(side_px * side_px, device=device).reshape(side_px, side_px)
    return torch.stack([apply_d4(grid, k).reshape(-1) for k in range(N_D4)])


def random_d4_with_index(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply an independent uniform random dihedral transform to each square image.

    Vectorised: one ``gather`` with a per-sample pixel map, no per-sample loop, no host sync.

    Args:
        x: Images (N, C, S, S).
        generator: Random source on ``x``'s device.

    Returns:
        The transformed images (N, C, S, S), contiguous, and the (N,) long transform indices k
        (`apply_d4`'s convention).
    """
    n_images, n_channels, height_px, width_px = x.shape
    if height_px != width_px:
        raise HistodetectError(f"D4 needs square images, got {height_px}x{width_px} px.")
    k = torch.randint(0, N_D4, (n_images,), generator=generator, device=x.device)
    n_pixels = height_px * width_px
    pixel_map = _d4_pixel_maps(height_px, x.device)[k]
    flat = x.reshape(n_images, n_channels, n_pixels)
    out = flat.gather(2, pixel_map.unsqueeze(1).expand(n_images, n_channels, n_pixels))
    return out.reshape(x.shape), k


def random_d4(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return (N, C, S, S) images, each under its own random flip/90-degree rotation."""
    return random_d4_with_index(x, generator)[0]


# ----------------------------------------------------------------------------- stain (HED)


@functools.lru_cache(maxsize=8)
def _stain_matrices(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rgb_from_hed, hed_from_rgb) as float32 on ``device``; inverted in float64 on the CPU.

    Cached per device so that later calls make no host-to-device copy (which would sync).
    """
    rgb_from_hed = torch.tensor(RGB_FROM_HED, dtype=torch.float64)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed)
    return rgb_from_hed.to(device, torch.float32), hed_from_rgb.to(device, torch.float32)


def hed_jitter(
    x: torch.Tensor,
    sigma: float = 0.05,
    bias: float = 0.05,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Jitter H&E staining in HED space (Ruifrok & Johnston colour deconvolution).

    Per pixel, optical density ``od = -ln(max(x, 1e-6))`` (row vector over R, G, B) is
    deconvolved into stain concentrations ``c = od @ hed_from_rgb``; per image and stain,
    ``c' = alpha * c + beta`` with ``alpha ~ U(1 - sigma, 1 + sigma)`` and
    ``beta ~ U(-bias, bias)``; then ``x' = clamp(exp(-(c' @ rgb_from_hed)), 0, 1)``.
    Concentrations are in natural-log optical-density units: scikit-image's ``rgb2hed``
    divides them by ln(1e6) ~= 13.8, so its bias values are 13.8x ours. Concentrations are
    not clipped at 0, so sigma = bias = 0 is the identity (up to float rounding).

    Args:
        x: Float images (N, 3, H, W) in [0, 1].
        sigma: Half-width of the multiplicative stain factor (0 disables it).
        bias: Half-width of the additive stain shift, in optical-density units (0 disables it).
        generator: Random source on ``x``'s device.

    Returns:
        Float images (N, 3, H, W) in [0, 1], same dtype and device as ``x``.
    """
    _check_images(x)
    n_images = x.shape[0]
    rgb_from_hed, hed_from_rgb = _stain_matrices(x.device)
    alpha = _uniform((n_images, 3), 1.0 - sigma, 1.0 + sigma, generator, x.device)
    beta = _uniform((n_images, 3), -bias, bias, generator, x.device)
    # The map is affine in od: od' = od @ (H diag(alpha) R) + beta @ R, one 3x3 per image.
    per_image_matrix = hed_from_rgb @ (alpha.unsqueeze(2) * rgb_from_hed)
    per_image_offset = beta @ rgb_from_hed
    od = -torch.log(x.to(torch.float32).clamp_min(OD_FLOOR))
    jittered_od = torch.einsum("nchw,ncd->ndhw", od, per_image_matrix)
    jittered_od = jittered_od + per_image_offset[:, :, None, None]
    return torch.exp(-jittered_od).clamp_(0.0, 1.0).to(x.dtype)


# ----------------------------------------------------------------------------- colour


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Return (N, 1, H, W) luma of (N, 3, H, W) RGB images (Python scalars: no host copy)."""
    red, green, blue = GREY_WEIGHTS
    return red * x[:, 0:1] + green * x[:, 1:2] + blue * x[:, 2:3]


def colour_jitter(
    x: torch.Tensor,
    brightness: float = 0.1,
    contrast: float = 0.1,
    saturation: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-image brightness, then contrast, then saturation jitter (fixed order), clamped.

    Each factor is drawn per image from U(1 - amount, 1 + amount): brightness scales the
    pixels, contrast blends with the image's mean grey level, saturation blends with each
    pixel's grey level (as torchvision's ColorJitter does, without its random order).

    Args:
        x: Float images (N, 3, H, W) in [0, 1].
        brightness: Half-width of the brightness factor range, in [0, 1].
        contrast: Half-width of the contrast factor range, in [0, 1].
        saturation: Half-width of the saturation factor range, in [0, 1].
        generator: Random source on ``x``'s device.

    Returns:
        Float images (N, 3, H, W) in [0, 1], same dtype and device as ``x``.
    """
    _check_images(x)
    factor_shape = (x.shape[0], 1, 1, 1)
    brightness_factor = _uniform(factor_shape, 1 - brightness, 1 + brightness, generator, x.device)
    contrast_factor = _uniform(factor_shape, 1 - contrast, 1 + contrast, generator, x.device)
    saturation_factor = _uniform(factor_shape, 1 - saturation, 1 + saturation, generator, x.device)
    x = (x * brightness_factor.to(x.dtype)).clamp(0.0, 1.0)
    mean_grey = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean_grey) * contrast_factor.to(x.dtype) + mean_grey).clamp(0.0, 1.0)
    grey = _grey(x)
    return ((x - grey) * saturation_factor.to(x.dtype) + grey).clamp(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Blur each image with its own Gaussian (separable, mirrored borders, no host sync).

    Args:
        x: Float images (N, 3, H, W).
        sigma: (N,) standard deviations in pixels, each in [0, max_sigma]; 0 leaves the image
            unchanged.
        max_sigma: Fixes the kernel radius, ceil(3 * max_sigma) (at most H - 1 and W - 1).

    Returns:
        Blurred (N, 3, H, W) images, same dtype and device as ``x``.
    """
    _check_images(x)
    n, c, h, w = x.shape
    radius = min(math.ceil(3 * max_sigma), h - 1, w - 1)
    if radius <= 0:
        return x
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    spread = sigma.to(torch.float32).clamp(min=1e-3).reshape(n, 1)
    kernel = torch.exp(-0.5 * (taps / spread) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0).to(x.dtype)
    flat = torch.nn.functional.pad(x.reshape(1, n * c, h, w), (radius,) * 4, mode="reflect")
    rows = torch.nn.functional.conv2d(flat, kernel.reshape(n * c, 1, -1, 1), groups=n * c)
    out = torch.nn.functional.conv2d(rows, kernel.reshape(n * c, 1, 1, -1), groups=n * c)
    return out.reshape(n, c, h, w)


def random_blur(
    x: torch.Tensor, max_sigma: float = 1.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gaussian blur with a sigma drawn per image from U(0, max_sigma): focus varies across a
    slide and between scanners (`evaluation.shifts.blur` tests sigma 1.2 px)."""
    sigma = _uniform((x.shape[0],), 0.0, max_sigma, generator, x.device)
    return gaussian_blur(x, sigma, max_sigma)


# ----------------------------------------------------------------------------- mixup


def mixup(
    x: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each training image with another of the batch, and its label alike (Zhang et al.,
    2018, "mixup: Beyond Empirical Risk Minimization").

    The weight of each image's own content is drawn per image from Beta(alpha, alpha) and folded
    to at least 0.5, so the image keeps the majority of its own pixels: its original label stays
    the one to score training accuracy and AUC against, while the loss learns from the mixed,
    soft label. Pixels stay in [0, 1].

    Args:
        x: Float images (N, 3, S, S) in [0, 1].
        labels: Float labels (N,) in [0, 1].
        alpha: Beta parameter; small values mix little (most weights near 1).
        generator: Random source on ``x``'s device; seeded, it makes the output reproducible.

    Returns:
        The mixed images and the mixed (soft) labels.
    """
    from scipy.special import betaincinv  # the Beta quantile: draws come from `generator`

    _check_images(x)
    if alpha <= 0:
        raise HistodetectError(f"mixup alpha must be above 0, got {alpha}.")
    n = x.shape[0]
    # float32 on the device (Apple's MPS has no float64), the quantile in float64 on the CPU
    unit = torch.rand((n,), generator=generator, device=x.device, dtype=torch.float32)
    weight = torch.from_numpy(betaincinv(alpha, alpha, unit.to("cpu", torch.float64).numpy()))
    weight = torch.maximum(weight, 1.0 - weight).to(device=x.device, dtype=x.dtype)
    partner = torch.randperm(n, generator=generator, device=x.device)
    w = weight.view(n, 1, 1, 1)
    mixed = w * x + (1.0 - w) * x[partner]
    soft = weight.to(labels.dtype) * labels + (1.0 - weight.to(labels.dtype)) * labels[partner]
    return mixed, soft


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AugmentConfig:
    """Which training augmentations `apply_augment` runs, and how strongly.

    Attributes:
        d4: Random flip / 90-degree rotation per image.
        hed: HED stain jitter (`hed_jitter`).
        hed_sigma: Multiplicative stain half-width, in [0, 1).
        hed_bias: Additive stain half-width in optical-density units, >= 0.
        colour: Brightness/contrast/saturation jitter (`colour_jitter`).
        brightness: Brightness half-width, in [0, 1].
        contrast: Contrast half-width, in [0, 1].
        saturation: Saturation half-width, in [0, 1].
        blur: Gaussian blur with a per-image sigma (`random_blur`); off by default.
        blur_sigma: Largest sigma in pixels, in [0, 5].
        mixup: Mix pairs of training images and their labels (`mixup`); off by default.
        mixup_alpha: Beta(alpha, alpha) parameter of the mixing weight, in (0, 10].
    """

    d4: bool = True
    hed: bool = True
    hed_sigma: float = 0.1
    hed_bias: float = 0.1
    colour: bool = True
    brightness: float = 0.15
    contrast: float = 0.2
    saturation: float = 0.2
    blur: bool = False
    blur_sigma: float = 1.5
    mixup: bool = False
    mixup_alpha: float = 0.4

    def __post_init__(self) -> None:
        """Validate ranges so a bad config fails at load time, not mid-training."""
        for name in ("d4", "hed", "colour", "blur", "mixup"):
            if not isinstance(getattr(self, name), bool):
                raise HistodetectError(f"AugmentConfig.{name} must be true or false.")
        limits = {"hed_sigma": 0.999, "hed_bias": 13.8, "brightness": 1.0}
        limits |= {"contrast": 1.0, "saturation": 1.0, "blur_sigma": 5.0, "mixup_alpha": 10.0}
        for name, high in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise HistodetectError(f"AugmentConfig.{name} must be a number.")
            open_at_0 = name == "mixup_alpha"  # Beta(0, 0) is no distribution
            if not (value > 0.0 if open_at_0 else value >= 0.0) or value > high:
                low = "(0" if open_at_0 else "[0"
                raise HistodetectError(f"AugmentConfig.{name} must lie in {low}, {high}].")

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (the seed preset)."""
        return cls(d4=False, hed=False, colour=False, blur=False, mixup=False)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict that `from_dict` accepts."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Build a config from a dict; missing keys take defaults, unknown keys raise."""
        reject_unknown_fields(cls, data, "augmentation keys")
        return cls(**data)


def apply_augment(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Run the enabled augmentations in order D4 → HED → blur → colour on a training batch.

    Args:
        x: Float images (N, 3, S, S) in [0, 1] on any device.
        cfg: Which augmentations to run.
        generator: Random source on ``x``'s device; seeded, it makes the output reproducible.

    Returns:
        Augmented (N, 3, S, S) images in [0, 1]; ``x`` itself when everything is off.
    """
    _check_images(x)
    if cfg.d4:
        x = random_d4(x, generator)
    if cfg.hed:
        x = hed_jitter(x, cfg.hed_sigma, cfg.hed_bias, generator)
    if cfg.blur:  # after the stain (tissue), before the colour (scanner); off: no draws
        x = random_blur(x, cfg.blur_sigma, generator)
    if cfg.colour:
        x = colour_jitter(x, cfg.brightness, cfg.contrast, cfg.saturation, generator)
    return x
