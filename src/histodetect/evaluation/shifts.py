"""A fixed, seeded set of image shifts (stain, colour, blur, JPEG, noise) for robustness checks.

A model that keeps its AUC when the same held-out patches are re-stained, blurred or
re-compressed is more likely to keep it on slides from another lab or scanner; a model whose
validation AUC rises while its shifted AUC falls has learned the training slides, not the task.
Every shift is a pure function of the uint8 (N, 96, 96, 3) patches and a seed, so two models
are always compared on exactly the same shifted pixels. The strengths lie beyond the default
training augmentation (`histodetect.augment.AugmentConfig`), so they test extrapolation.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
import torch

from histodetect.augment import colour_jitter, hed_jitter
from histodetect.errors import HistodetectError

ShiftFn = Callable[[np.ndarray, int], np.ndarray]
"""(uint8 (N, H, W, 3) patches, seed) -> shifted uint8 patches of the same shape."""


def _as_float(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255.0


def _as_uint8(x: torch.Tensor) -> np.ndarray:
    out = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(out.numpy())


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stain(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Strong per-image HED stain change: stain amounts x U(0.75, 1.25), offsets U(-0.25, 0.25)."""
    return _as_uint8(hed_jitter(_as_float(pixels), 0.25, 0.25, _generator(seed)))


def colour(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Strong per-image brightness, contrast and saturation change, each x U(0.65, 1.35)."""
    return _as_uint8(colour_jitter(_as_float(pixels), 0.35, 0.35, 0.35, _generator(seed)))


def blur(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Gaussian blur with sigma 1.2 px (an out-of-focus scan); the seed is unused."""
    from PIL import Image, ImageFilter

    return np.stack(
        [np.asarray(Image.fromarray(p).filter(ImageFilter.GaussianBlur(1.2))) for p in pixels]
    )


def jpeg(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Re-encode as JPEG at quality 30 with 4:2:0 chroma (heavy compression); seed unused."""
    from PIL import Image

    out = []
    for patch in pixels:
        buffer = io.BytesIO()
        Image.fromarray(patch).save(buffer, format="JPEG", quality=30, subsampling=2)
        out.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return np.stack(out)


def gamma(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Per-image gamma drawn from U(0.6, 1.6) (a different scanner's tone curve)."""
    rng = np.random.default_rng(seed)
    exponents = rng.uniform(0.6, 1.6, size=(len(pixels), 1, 1, 1))
    return np.round(255.0 * (pixels / 255.0) ** exponents).astype(np.uint8)


def noise(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Additive Gaussian noise, sigma 8 grey levels per channel (a noisy sensor)."""
    rng = np.random.default_rng(seed)
    noisy = pixels.astype(np.float32) + rng.normal(0.0, 8.0, size=pixels.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


SHIFTS: dict[str, ShiftFn] = {
    "stain": stain,
    "colour": colour,
    "gamma": gamma,
    "blur": blur,
    "jpeg": jpeg,
    "noise": noise,
}
"""Every named shift, in report order."""


def parse_shifts(text: str | None) -> tuple[str, ...]:
    """`--shift` value -> shift names: a comma list of `SHIFTS` names and `all` (every one),
    or None = none.

    Raises:
        HistodetectError: On an unknown name or an empty value, naming the valid ones.
    """
    if text is None:
        return ()
    names = [t.strip() for t in text.split(",") if t.strip()]
    if "all" in names:  # `all,blur` is every shift, as `all` is
        names = [*SHIFTS, *(n for n in names if n != "all")]
    unknown = [n for n in names if n not in SHIFTS]
    if unknown or not names:
        raise HistodetectError(
            f"--shift {text!r}: unknown shift {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(SHIFTS)} or all."
        )
    return tuple(dict.fromkeys(names))


def apply_shift(name: str, pixels: np.ndarray, seed: int = 0, chunk: int = 512) -> np.ndarray:
    """Apply shift `name` to uint8 (N, H, W, 3) patches; chunked so memory stays bounded.

    The seed of chunk k is ``seed * 1_000_003 + k``: the result depends only on the patches,
    their order and `seed`.
    """
    if name not in SHIFTS:
        raise HistodetectError(f"unknown shift {name!r}; choose from {', '.join(SHIFTS)}.")
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise HistodetectError(f"shifts need uint8 (N, H, W, 3) patches, got {pixels.dtype} "
                               f"{pixels.shape}.")  # fmt: skip
    parts = [
        SHIFTS[name](pixels[start : start + chunk], seed * 1_000_003 + k)
        for k, start in enumerate(range(0, len(pixels), chunk))
    ]
    return np.concatenate(parts) if parts else pixels.copy()


def shifted_aucs(
    score: Callable[[np.ndarray], np.ndarray],
    pixels: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    seed: int = 0,
    n_boot: int = 200,
) -> dict[str, dict[str, object]]:
    """AUC (with a bootstrap 95% interval) of `score` on each shifted copy of the patches.

    Args:
        score: uint8 patches -> tumour probabilities (n,).
        pixels: uint8 (N, H, W, 3) held-out patches.
        labels: 0/1 labels (N,).
        names: Shift names from `SHIFTS`.

    Returns:
        ``{name: {"auc", "auc_ci95", "description"}}``, plus ``"mean"`` over the shifts.
    """
    from histodetect.evaluation.metrics import bootstrap_auc_ci, compute_auc

    results: dict[str, dict[str, object]] = {}
    aucs = []
    for name in names:
        probs = score(apply_shift(name, pixels, seed))
        auc = compute_auc(labels, probs)
        aucs.append(auc)
        doc = (SHIFTS[name].__doc__ or "").strip().splitlines()[0]
        results[name] = {"auc": auc, "auc_ci95": bootstrap_auc_ci(labels, probs, n_boot),
                         "description": doc}  # fmt: skip
    valid = [a for a in aucs if a is not None]
    if valid:
        results["mean"] = {"auc": float(np.mean(valid)), "auc_ci95": None,
                           "description": "mean AUC over the shifts above"}  # fmt: skip
    return results
