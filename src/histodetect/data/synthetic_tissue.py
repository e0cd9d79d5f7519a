"""Drawing one synthetic H&E-like patch: stroma, fibres, gaps, lymphocytes, tumour nuclei, stain."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from histodetect.data.patch import CENTRE_SIZE_PX, CENTRE_START_PX, PATCH_SIZE_PX

CENTRE_STOP_PX = CENTRE_START_PX + CENTRE_SIZE_PX  # one past the last row/column of the centre box

KIND_NORMAL, KIND_DECOY, KIND_TUMOUR = 0, 1, 2
_LYMPH_HALF_BOX_PX = 5  # lymphocyte drawing box is (2*5+1)^2 px
_HALO_HALF_BOX_PX, _HALO_GAIN = 4, 3.0  # cytoplasm halo = gain * 9x9 box blur of the nuclei
# Optical-density colour vectors (Ruifrok & Johnston style), normalised per slide.
_HAEM_OD = np.array([0.65, 0.70, 0.29])
_EOSIN_OD = np.array([0.16, 0.82, 0.45])

FloatMap = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SlideStain:
    """Per-slide staining: OD colour vectors (3,), stain strengths, lamp colour (0..255)."""

    haem_od: FloatMap
    eosin_od: FloatMap
    haem_strength: float
    eosin_strength: float
    lamp_rgb: FloatMap
    lymphocytes_per_patch: float


@dataclass(frozen=True)
class _TumourShapes:
    """Shape parameters of K tumour nuclei; every array has K rows."""

    radius_px: FloatMap  # (K,) mean radius
    elongation: FloatMap  # (K,) ellipse axis ratio is (1 + e)^2
    orientation_rad: FloatMap  # (K,)
    harmonic_amp: FloatMap  # (K, 3) radius perturbation for angular harmonics 2..4
    harmonic_phase_rad: FloatMap  # (K, 3)
    darkness: FloatMap  # (K,) haematoxylin concentration

    @property
    def extent_px(self) -> FloatMap:
        """(K,) upper bound on the distance from a nucleus centre to any of its pixels."""
        return self.radius_px * (1.0 + self.elongation) * (1.0 + self.harmonic_amp.sum(axis=1))


def make_slide_stain(seed: int, slide: int) -> SlideStain:
    """Draw one slide's stain colours and strengths from its own random stream."""
    rng = np.random.default_rng([seed, 1, slide])
    haem = np.clip(_HAEM_OD + rng.normal(0.0, 0.05, 3), 0.05, None)
    eosin = np.clip(_EOSIN_OD + rng.normal(0.0, 0.06, 3), 0.02, None)
    return SlideStain(
        haem_od=haem / np.linalg.norm(haem),
        eosin_od=eosin / np.linalg.norm(eosin),
        haem_strength=float(rng.uniform(0.75, 1.25)),
        eosin_strength=float(rng.uniform(0.6, 1.4)),
        lamp_rgb=np.clip(rng.normal(246.0, 5.0, 3), 225.0, 255.0),
        lymphocytes_per_patch=float(rng.uniform(25.0, 80.0)),
    )


def render_patch(
    rng: np.random.Generator, kind: int, stain: SlideStain
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """Draw one patch of the given kind; returns (96, 96, 3) uint8 RGB and a (96, 96) tumour mask."""
    eosin = _stroma_eosin(rng)
    haem = 0.06 + 0.03 * _smooth_noise(rng, 6)
    gap = _gap_alpha(rng)
    eosin *= 1.0 - gap
    haem *= 1.0 - gap
    lymph = np.zeros_like(haem)
    count = rng.poisson(stain.lymphocytes_per_patch * rng.uniform(0.5, 1.5))
    _draw_lymphocytes(rng, lymph, int(count))
    haem = np.maximum(haem, lymph * (1.0 - gap))
    mask = np.zeros(haem.shape, dtype=bool)
    if kind != KIND_NORMAL:
        shapes = _sample_tumour_shapes(rng, int(rng.integers(3, 13)))
        centres, keep = _place_cluster(rng, shapes.extent_px, decoy=kind == KIND_DECOY)
        shapes = _select_shapes(shapes, keep)
        _draw_tumour_nuclei(rng, centres[keep], shapes, haem, eosin, mask)
    return _to_rgb(rng, haem, eosin, stain), mask


@functools.lru_cache(maxsize=16)
def _upsample_matrix(grid: int) -> FloatMap:
    """(96, grid) linear-interpolation weights that stretch a grid x grid field to 96 x 96 px."""
    pos = np.linspace(0.0, grid - 1.0, PATCH_SIZE_PX)
    low = np.minimum(np.floor(pos).astype(int), grid - 2)
    frac = pos - low
    weights = np.zeros((PATCH_SIZE_PX, grid))
    weights[np.arange(PATCH_SIZE_PX), low] = 1.0 - frac
    weights[np.arange(PATCH_SIZE_PX), low + 1] = frac
    return weights


@functools.lru_cache(maxsize=1)
def _pixel_grid() -> tuple[FloatMap, FloatMap]:
    """Row and column coordinates (96, 96) of every pixel, as floats."""
    yy, xx = np.mgrid[0:PATCH_SIZE_PX, 0:PATCH_SIZE_PX].astype(np.float64)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, grid: int) -> FloatMap:
    """(96, 96) smooth random field with values in about [-1, 1]; ``grid`` sets the feature count."""
    weights = _upsample_matrix(grid)
    field: FloatMap = weights @ rng.uniform(-1.0, 1.0, (grid, grid)) @ weights.T
    return field


def _stroma_eosin(rng: np.random.Generator) -> FloatMap:
    """(96, 96) eosin concentration of the stroma: mottled blotches plus wavy fibres and grain."""
    base = rng.uniform(0.3, 0.45) * (
        1.0 + 0.25 * _smooth_noise(rng, 5) + 0.15 * _smooth_noise(rng, 20)
    )
    grain = 0.08 * (rng.random(base.shape) - 0.5)
    eosin: FloatMap = np.clip(base + _fibres(rng) + grain, 0.02, None)
    return eosin


def _fibres(rng: np.random.Generator) -> FloatMap:
    """(96, 96) extra eosin of thin wavy collagen fibres that fade in and out across the patch."""
    theta = rng.uniform(0.0, np.pi)
    period_px = rng.uniform(6.0, 14.0)
    yy, xx = _pixel_grid()
    warp = 6.0 * _smooth_noise(rng, 4) + 1.5 * _smooth_noise(rng, 10)
    phase = 2.0 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period_px + warp
    fibres = np.clip(np.sin(phase.astype(np.float32)), 0.0, 1.0).astype(np.float64)
    fibres *= fibres
    presence = np.clip(1.5 * _smooth_noise(rng, 4) + rng.uniform(-0.3, 0.8), 0.0, 1.0)
    strength: FloatMap = rng.uniform(0.1, 0.35) * presence * fibres * fibres
    return strength


def _gap_alpha(rng: np.random.Generator) -> FloatMap:
    """(96, 96) opacity in [0, 1] of white gaps (fat, lumen); all zero for about 2 patches in 3."""
    if rng.uniform() > 0.35:
        return np.zeros((PATCH_SIZE_PX, PATCH_SIZE_PX))
    field = _smooth_noise(rng, int(rng.integers(3, 7))) + 0.15 * _smooth_noise(rng, 14)
    threshold = rng.uniform(0.25, 0.6)
    gap: FloatMap = np.clip((field - threshold) / 0.06, 0.0, 1.0)
    return gap


@dataclass(frozen=True)
class _Boxes:
    """K square drawing boxes of side B around nucleus centres.

    Attributes:
        rows: (K, B, 1) pixel rows; cols: (K, 1, B) pixel columns (may fall off the patch).
        dy, dx: (K, B, B) pixel offsets in px from each box's (sub-pixel) centre.
        inside: (K, B, B) whether the pixel lies on the patch.
        flat: (M,) row-major patch index of every on-patch box pixel, in ``inside`` order.
    """

    rows: npt.NDArray[np.int64]
    cols: npt.NDArray[np.int64]
    dy: FloatMap
    dx: FloatMap
    inside: npt.NDArray[np.bool_]
    flat: npt.NDArray[np.int64]


def _box_grid(centres_px: FloatMap, half_box_px: int) -> _Boxes:
    """Boxes of side 2 * half_box_px + 1 px around (K, 2) sub-pixel centres (row, col)."""
    offsets = np.arange(-half_box_px, half_box_px + 1)
    anchor = np.rint(centres_px).astype(np.int64)
    rows = anchor[:, 0, None, None] + offsets[None, :, None]
    cols = anchor[:, 1, None, None] + offsets[None, None, :]
    dy = np.broadcast_to(
        rows - centres_px[:, 0, None, None], (len(anchor), offsets.size, offsets.size)
    )
    dx = np.broadcast_to(cols - centres_px[:, 1, None, None], dy.shape)
    inside = ((rows >= 0) & (rows < PATCH_SIZE_PX)) & ((cols >= 0) & (cols < PATCH_SIZE_PX))
    flat = (rows * PATCH_SIZE_PX + cols)[inside]
    return _Boxes(rows, cols, dy, dx, inside, flat)


def _stamp_sum(boxes: _Boxes, values: FloatMap) -> FloatMap:
    """(96, 96) sum of the (K, B, B) box ``values`` placed on the patch; off-patch parts drop."""
    total = np.bincount(
        boxes.flat, weights=values[boxes.inside], minlength=PATCH_SIZE_PX * PATCH_SIZE_PX
    )
    return np.asarray(total, dtype=np.float64).reshape(PATCH_SIZE_PX, PATCH_SIZE_PX)


def _draw_lymphocytes(rng: np.random.Generator, haem: FloatMap, count: int) -> None:
    """Stamp ``count`` small round dark nuclei (radius 2..4 px) anywhere on ``haem`` in place."""
    if count == 0:
        return
    centres = rng.uniform(-2.0, PATCH_SIZE_PX + 1.0, (count, 2))
    radius_px = rng.uniform(2.0, 4.0, count)
    darkness = rng.uniform(0.75, 1.05, count)
    boxes = _box_grid(centres, _LYMPH_HALF_BOX_PX)
    dy, dx = boxes.dy, boxes.dx
    cover = np.clip(radius_px[:, None, None] + 0.5 - np.sqrt(dy * dy + dx * dx), 0.0, 1.0)
    texture = 0.9 + 0.2 * rng.random(cover.shape)
    value = darkness[:, None, None] * cover * texture
    np.maximum(haem, np.minimum(_stamp_sum(boxes, value), 1.15), out=haem)


def _sample_tumour_shapes(rng: np.random.Generator, count: int) -> _TumourShapes:
    """Draw shape parameters of ``count`` large pleomorphic tumour nuclei (radius 5..9 px)."""
    return _TumourShapes(
        radius_px=rng.uniform(5.0, 9.0, count),
        elongation=rng.uniform(0.0, 0.3, count),
        orientation_rad=rng.uniform(0.0, np.pi, count),
        harmonic_amp=rng.uniform(0.0, 0.08, (count, 3)),
        harmonic_phase_rad=rng.uniform(0.0, 2.0 * np.pi, (count, 3)),
        darkness=rng.uniform(1.05, 1.45, count),
    )


def _select_shapes(shapes: _TumourShapes, keep: npt.NDArray[np.int64]) -> _TumourShapes:
    """The nuclei of ``shapes`` at indices ``keep``."""
    return _TumourShapes(
        radius_px=shapes.radius_px[keep],
        elongation=shapes.elongation[keep],
        orientation_rad=shapes.orientation_rad[keep],
        harmonic_amp=shapes.harmonic_amp[keep],
        harmonic_phase_rad=shapes.harmonic_phase_rad[keep],
        darkness=shapes.darkness[keep],
    )


def _cluster_seed(rng: np.random.Generator, extent_px: float, decoy: bool) -> FloatMap:
    """(2,) centre of a cluster's first nucleus: inside the centre box, or clear of it for decoys."""
    if not decoy:
        return rng.uniform(CENTRE_START_PX + 4.0, CENTRE_STOP_PX - 4.0, 2)
    across = rng.uniform(1.0, CENTRE_START_PX - 1.0 - extent_px)
    if rng.uniform() < 0.5:
        across = PATCH_SIZE_PX - 1.0 - across
    along = rng.uniform(4.0, PATCH_SIZE_PX - 5.0)
    return np.array([across, along]) if rng.uniform() < 0.5 else np.array([along, across])


def _place_cluster(
    rng: np.random.Generator, extent_px: FloatMap, decoy: bool
) -> tuple[FloatMap, npt.NDArray[np.int64]]:
    """Nucleus centres (K, 2) (row, col) of one loose cluster and the indices of those to draw.

    Each later nucleus takes the allowed candidate position with the most room; one with no
    allowed candidate (off the patch, or touching the centre box in a decoy) is not drawn.
    """
    centres = np.empty((extent_px.size, 2))
    centres[0] = _cluster_seed(rng, float(extent_px[0]), decoy)
    placed = [0]
    spread_px = rng.uniform(6.0, 11.0)
    for k in range(1, extent_px.size):
        candidates = centres[0] + rng.normal(0.0, spread_px, (24, 2))
        allowed = _allowed_positions(candidates, float(extent_px[k]), decoy)
        offsets = candidates[:, None, :] - centres[None, placed, :]
        gaps = np.sqrt((offsets * offsets).sum(axis=2))
        clearance = (gaps - 0.85 * (extent_px[k] + extent_px[None, placed])).min(axis=1)
        centres[k] = candidates[int(np.argmax(np.where(allowed, clearance, -np.inf)))]
        if allowed.any():
            placed.append(k)
    return centres, np.array(placed, dtype=np.int64)


def _allowed_positions(
    candidates: FloatMap, extent_px: float, decoy: bool
) -> npt.NDArray[np.bool_]:
    """(M,) whether each (M, 2) candidate centre is near the patch and, for decoys, clear of the box."""
    allowed = np.all((candidates > -3.0) & (candidates < PATCH_SIZE_PX + 2.0), axis=1)
    if decoy:
        low, high = CENTRE_START_PX - 0.5, CENTRE_STOP_PX - 0.5
        clear = (candidates + extent_px < low) | (candidates - extent_px > high)
        allowed &= clear[:, 0] | clear[:, 1]
    return allowed


def _nucleus_radius_px(
    shapes: _TumourShapes, dy: FloatMap, dx: FloatMap, dist: FloatMap
) -> FloatMap:
    """(K, B, B) boundary radius of each irregular nucleus in the direction of each box pixel.

    The boundary is an ellipse whose radius is modulated by angular harmonics 2..4; angles are
    handled as unit complex numbers to avoid trigonometric calls per pixel.
    """
    direction = (dx + 1j * dy) / np.maximum(dist, 1e-9)
    turned = direction * np.exp(-1j * shapes.orientation_rad)[:, None, None]
    major = (shapes.radius_px * (1.0 + shapes.elongation))[:, None, None]
    minor = (shapes.radius_px / (1.0 + shapes.elongation))[:, None, None]
    ellipse = major * minor / np.sqrt((minor * turned.real) ** 2 + (major * turned.imag) ** 2)
    wobble = np.ones(dist.shape)
    power = direction
    for h in range(3):
        power = power * direction
        rotor = shapes.harmonic_amp[:, h] * np.exp(1j * shapes.harmonic_phase_rad[:, h])
        wobble += (power * rotor[:, None, None]).real
    radius: FloatMap = ellipse * wobble
    return radius


def _draw_tumour_nuclei(
    rng: np.random.Generator,
    centres: FloatMap,
    shapes: _TumourShapes,
    haem: FloatMap,
    eosin: FloatMap,
    mask: npt.NDArray[np.bool_],
) -> None:
    """Paint tumour nuclei with pale cytoplasm halos into haem/eosin and mark them in mask, in place."""
    boxes = _box_grid(centres, int(np.ceil(shapes.extent_px.max() + 1.0)))
    dy, dx = boxes.dy, boxes.dx
    dist = np.sqrt(dy * dy + dx * dx)
    boundary = _nucleus_radius_px(shapes, dy, dx, dist)
    cover = np.clip(boundary + 0.5 - dist, 0.0, 1.0)
    cover_total = np.minimum(_stamp_sum(boxes, cover), 1.0)
    halo = np.minimum(_HALO_GAIN * _box_blur(cover_total, _HALO_HALF_BOX_PX), 1.0)
    eosin *= 1.0 - 0.5 * halo
    np.maximum(haem, 0.22 * halo, out=haem)
    rim = np.clip(1.8 - (boundary - dist), 0.0, 1.0) * 0.25
    chromatin = _chromatin(rng, boxes.rows, boxes.cols) + _nucleoli(rng, dy, dx, shapes.radius_px)
    value = np.clip(shapes.darkness[:, None, None] * cover * (0.85 + rim + chromatin), 0.0, None)
    np.maximum(haem, np.minimum(_stamp_sum(boxes, value), 1.9), out=haem)
    mask |= _stamp_sum(boxes, (cover > 0.5).astype(np.float64)) > 0.5


def _box_blur(field: FloatMap, half_box_px: int) -> FloatMap:
    """(96, 96) mean of ``field`` over a (2h+1)^2 box around each pixel (zeros outside the patch)."""
    width = 2 * half_box_px + 1
    padded = np.pad(field, ((half_box_px + 1, half_box_px), (half_box_px + 1, half_box_px)))
    integral = padded.cumsum(axis=0).cumsum(axis=1)
    sums = (
        integral[width:, width:]
        - integral[:-width, width:]
        - integral[width:, :-width]
        + integral[:-width, :-width]
    )
    blurred: FloatMap = sums / (width * width)
    return blurred


def _chromatin(
    rng: np.random.Generator, rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64]
) -> FloatMap:
    """(K, B, B) relative darkness of coarse chromatin clumps, read from one patch-wide field."""
    field = 0.3 * _smooth_noise(rng, 40) + 0.12 * (rng.random((PATCH_SIZE_PX, PATCH_SIZE_PX)) - 0.5)
    clumps: FloatMap = field[
        np.clip(rows, 0, PATCH_SIZE_PX - 1), np.clip(cols, 0, PATCH_SIZE_PX - 1)
    ]
    return clumps


def _nucleoli(
    rng: np.random.Generator, dy: FloatMap, dx: FloatMap, radius_px: FloatMap
) -> FloatMap:
    """(K, B, B) extra darkness of one small nucleolus per nucleus, placed off-centre."""
    offset = rng.uniform(-0.4, 0.4, (radius_px.size, 2)) * radius_px[:, None]
    off_dy = dy - offset[:, 0, None, None]
    off_dx = dx - offset[:, 1, None, None]
    dist = np.sqrt(off_dy * off_dy + off_dx * off_dx)
    spot: FloatMap = 0.45 * np.clip(2.0 - dist, 0.0, 1.0)
    return spot


def _blur3(field: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``field`` (96, 96, ...) smoothed over its first two axes by a [1, 2, 1] / 4 kernel."""
    rows = 0.5 * field
    rows[1:] += 0.25 * field[:-1]
    rows[:-1] += 0.25 * field[1:]
    rows[0] += 0.25 * field[0]
    rows[-1] += 0.25 * field[-1]
    out = 0.5 * rows
    out[:, 1:] += 0.25 * rows[:, :-1]
    out[:, :-1] += 0.25 * rows[:, 1:]
    out[:, 0] += 0.25 * rows[:, 0]
    out[:, -1] += 0.25 * rows[:, -1]
    return out


def _to_rgb(
    rng: np.random.Generator, haem: FloatMap, eosin: FloatMap, stain: SlideStain
) -> npt.NDArray[np.uint8]:
    """Beer-Lambert mix of stain concentrations (96, 96) into (96, 96, 3) uint8 RGB.

    The concentrations are slightly blurred (optics) and uniform sensor noise is added.
    """
    od_per_unit = np.stack(
        (stain.haem_strength * stain.haem_od, stain.eosin_strength * stain.eosin_od)
    ).astype(np.float32)
    concentration = _blur3(np.stack((haem, eosin), axis=-1).astype(np.float32))
    rgb = concentration @ (-np.float32(np.log(10.0)) * od_per_unit)
    np.exp(rgb, out=rgb)
    rgb *= stain.lamp_rgb.astype(np.float32)
    noise = rng.random(rgb.shape, dtype=np.float32)
    noise *= 8.5
    rgb += noise
    rgb -= 3.75  # noise is uniform in [-3.75, 4.75); the +0.5 offset rounds on truncation
    return np.clip(rgb, 0.0, 255.0, out=rgb).astype(np.uint8)
