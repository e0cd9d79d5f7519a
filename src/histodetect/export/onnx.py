"""ONNX export: one graph from uint8 NHWC pixels to logits and calibrated probabilities.

The graph applies the model's own preprocessing (`histodetect.models.prepare_batch`: centre
crop, scaling to [0, 1], standardisation), so a deployment feeds raw RGB patches; the batch
size is dynamic. The ModelSpec and the source model's metadata ride in the ONNX
metadata_props (read back by `histodetect.inference.backends.onnx.read_metadata`), beside
plain keys (threshold, temperature, mean, std, crop, mpp, model name, version) for readers that
do not use histodetect. Every export is checked against PyTorch before it is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from histodetect import __version__
from histodetect.atomic import check_replaceable_file, output_lock, scratch_dir, temp_sibling
from histodetect.errors import HistodetectError
from histodetect.inference.backends.onnx import (
    CONTENT_KEY,
    FORMAT,
    FORMAT_KEY,
    FORMAT_VERSION,
    FORMAT_VERSION_KEY,
    INPUT_NAME,
    INT8_WEIGHTS,
    INT8_WEIGHTS_KEY,
    LOGITS_OUTPUT,
    MODEL_METADATA_KEY,
    ONNX_SUFFIX,
    PROBABILITY_OUTPUT,
    SPEC_KEY,
    UNSEALED,
    seal,
)
from histodetect.models import spec as spec_module
from histodetect.models.checkpoint import LoadedModel, load_checkpoint
from histodetect.models.pool_order import relu_before_pool
from histodetect.models.spec import ModelSpec, logits_to_probability, prepare_batch

INSTALL_HINT = "pip install -c constraints.txt -e '.[onnx]'"
PARITY_TOLERANCE = 1e-4
"""Largest difference of probabilities (ONNX Runtime against PyTorch, fp32) an export may show."""
LOGIT_TOLERANCE = 1e-3
"""Largest difference of logits (fp32), relative to max(1, |logit|). Probabilities alone miss a
wrong graph wherever the sigmoid flattens: at p = 0.006 (the bundled model on noise) a logit off
by 0.015 stays under `PARITY_TOLERANCE`, and near p = 0 or 1 one off by several units does."""
INT8_TOLERANCE = 0.1
"""Largest difference of probabilities an int8 export may show on its calibration patches
(a guard against a broken quantisation; about 0.02 was measured on real patches)."""


@dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote.

    Attributes:
        path: the .onnx file.
        spec: the exported model's ModelSpec.
        max_probability_difference: ONNX Runtime against PyTorch fp32 on the check patches
            (seeded random ones, or the calibration patches for int8).
        size_bytes: file size.
        precision: "float32" or "int8".
    """

    path: Path
    spec: ModelSpec
    max_probability_difference: float
    size_bytes: int
    precision: str


class DeployableModel(nn.Module):
    """uint8 (n, S, S, 3) RGB pixels → (logits (n,), calibrated probabilities (n,)), float32.

    Args:
        model: maps (n, 3, s, s) standardised images to (n,) logits.
        spec: its ModelSpec (preprocessing and temperature).
    """

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocess exactly as `prepare_batch` does, run the model, calibrate."""
        logits = self.model(prepare_batch(pixels, self.spec)).float()
        return logits, logits_to_probability(logits, self.spec)


def export_onnx(
    model_path: Path | str | None,
    out: Path | str,
    *,
    overwrite: bool = False,
    int8_calibration: Sequence[Path | str] = (),
) -> ExportResult:
    """Export a model.pt, checkpoint or run folder (None: the bundled model) to ONNX.

    Args:
        int8_calibration: inputs as predict takes them (files, folders, stores); when given,
            the graph is quantised to int8 with ranges measured on patches from them.

    Raises:
        HistodetectError: a bad --out, a missing extra, a model that cannot be loaded, or an
            int8 model that strays from fp32.
    """
    out = Path(out)
    _check_out(out, overwrite)
    _require_exporter()
    loaded = load_checkpoint(model_path)
    calibration = None
    if int8_calibration:
        from histodetect.export.quantize import calibration_patches

        calibration = calibration_patches(int8_calibration, loaded.spec.patch_size_px)
    return export_loaded(loaded, out, calibration)


def export_loaded(
    loaded: LoadedModel, out: Path, calibration: np.ndarray | None = None
) -> ExportResult:
    """Export a loaded model to `out` (checked by the caller: see `export_onnx`), through a
    temporary sibling renamed into place once the graph matches PyTorch.

    Raises:
        HistodetectError: an int8 graph that strays from fp32.
        RuntimeError: an fp32 graph that disagrees with PyTorch (a bug in the export).
    """
    model = relu_before_pool(loaded.model).eval()  # what the int8 quantiser handles
    deployable = DeployableModel(model, loaded.spec).eval()
    precision = "float32" if calibration is None else "int8"
    program = _trace(deployable, loaded.spec.patch_size_px)
    props = metadata_props(loaded.spec, loaded.metadata, loaded.path, precision)
    for key, value in props.items():
        program.model.metadata_props[key] = value
    with output_lock(out), scratch_dir(out) as scratch:
        tmp = temp_sibling(out)
        try:
            fit, held_out = _split_calibration(calibration)
            _write(program, scratch / "fp32.onnx", tmp, fit)
            seal(tmp)
            difference = check_parity(tmp, deployable, held_out)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    return ExportResult(out, loaded.spec, difference, out.stat().st_size, precision)


def _split_calibration(
    calibration: np.ndarray | None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(patches that set the int8 ranges, patches the int8 graph is checked on): every fourth
    patch is held out of the calibration, so the check is not on the very patches whose
    activations set the ranges (which flatters it). Under 4 patches, all serve both."""
    if calibration is None or len(calibration) < 4:
        return calibration, calibration
    held_out = np.arange(len(calibration)) % 4 == 3
    return calibration[~held_out], calibration[held_out]


def _write(program: Any, fp32: Path, tmp: Path, calibration: np.ndarray | None) -> None:
    """Save the fp32 graph to `tmp`, or its int8 quantisation calibrated on `calibration`."""
    if calibration is None:
        program.save(str(tmp), external_data=False)
        return
    from histodetect.export.quantize import quantize_int8

    program.save(str(fp32), external_data=False)
    quantize_int8(fp32, tmp, calibration)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix.lower() != ONNX_SUFFIX:
        raise HistodetectError(f"--out {out} must end in {ONNX_SUFFIX}.")
    if out.is_dir():
        raise HistodetectError(f"--out {out} is a folder; give a file name ending in .onnx.")
    check_replaceable_file(out, overwrite, is_histodetect_onnx, "an ONNX model")
    if not out.parent.is_dir():
        raise HistodetectError(f"--out {out}: folder {out.parent} does not exist; create it first.")


def is_histodetect_onnx(path: Path) -> bool:
    """True when `path` is an ONNX model carrying histodetect's metadata (one export wrote)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # anything unreadable is not ours
        return False
    return any(p.key == FORMAT_KEY and p.value == FORMAT for p in model.metadata_props)


def _require_exporter() -> None:
    try:
        import onnx  # noqa: F401 - the exporter needs both
        import onnxscript  # noqa: F401
    except ImportError:
        raise HistodetectError(f"ONNX export needs onnx and onnxscript: {INSTALL_HINT}.") from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress lines and warnings (e.g. that torchvision is absent)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _trace(deployable: DeployableModel, patch_size_px: int) -> Any:
    """torch.export the model with a dynamic batch and translate it to ONNX."""
    example = torch.zeros((2, patch_size_px, patch_size_px, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet_exporter(), torch.no_grad():
            return torch.onnx.export(
                deployable,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[LOGITS_OUTPUT, PROBABILITY_OUTPUT],
                dynamic_shapes={"pixels": {0: batch}},
                dynamo=True,
                verbose=False,
            )
    finally:
        # prepare_batch caches its mean/std tensors; tracing cached fake ones: drop them.
        spec_module._channel_constant.cache_clear()


def metadata_props(
    spec: ModelSpec, metadata: dict[str, Any], source: Path, precision: str = "float32"
) -> dict[str, str]:
    """The ONNX metadata_props: the spec as JSON (what histodetect reads) and plain keys."""
    mpp = getattr(spec, "mpp", None)
    props = {
        FORMAT_KEY: FORMAT,
        FORMAT_VERSION_KEY: FORMAT_VERSION,
        SPEC_KEY: json.dumps(spec.to_dict()),
        MODEL_METADATA_KEY: json.dumps(metadata, default=str),
        "histodetect_version": __version__,
        "model_name": spec.model_name,
        "input": f"{INPUT_NAME}: uint8 (batch, {spec.patch_size_px}, {spec.patch_size_px}, 3) RGB",
        "outputs": f"{LOGITS_OUTPUT}: float32 (batch,); {PROBABILITY_OUTPUT}: float32 (batch,) "
        "= sigmoid(logits / temperature), tumour if >= threshold",
        "threshold": repr(spec.threshold),
        "temperature": repr(spec.temperature),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "patch_size_px": str(spec.patch_size_px),
        "crop_px": "none" if spec.crop_px is None else str(spec.crop_px),
        "class_names": json.dumps(list(spec.class_names)),
        "source_sha256": _sha256(source),
        "precision": precision,
        CONTENT_KEY: UNSEALED,  # the file's own SHA-256 once written (`seal`)
    }
    if mpp:
        props["mpp"] = repr(float(mpp))
    if precision == "int8":
        props[INT8_WEIGHTS_KEY] = INT8_WEIGHTS
    return props


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parity_patches(size_px: int) -> np.ndarray:
    """8 seeded uint8 patches for the fp32 check: 4 of uniform noise and 4 smooth colour
    gradients, which (unlike noise alone) give mid-range activations and logits."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (4, size_px, size_px, 3), dtype=np.uint8)
    ramp = np.linspace(0.0, 1.0, size_px)
    low, high = rng.uniform(60, 200, (2, 4, 1, 1, 3))
    rows = ramp[None, :, None, None] * (high - low) + low  # (4, S, 1, 3)
    smooth = np.broadcast_to(rows, (4, size_px, size_px, 3)) + 20 * ramp[None, None, :, None]
    return np.concatenate([noise, np.clip(smooth, 0, 255).astype(np.uint8)])


def check_parity(
    onnx_path: Path, deployable: DeployableModel, int8_patches: np.ndarray | None = None
) -> float:
    """Largest |p_onnx - p_torch|: fp32 on `parity_patches` (at most `PARITY_TOLERANCE`, and
    logits within `LOGIT_TOLERANCE`), int8 on `int8_patches`, held out of its calibration (at
    most `INT8_TOLERANCE`).

    Raises:
        RuntimeError: When an fp32 graph disagrees with PyTorch (a bug in the export).
        HistodetectError: When an int8 graph strays too far (keep the fp32 export).
    """
    from histodetect.inference.backends.onnx import OnnxBackend

    pixels = int8_patches
    if pixels is None:
        pixels = parity_patches(deployable.spec.patch_size_px)
    with torch.no_grad():
        expected_logits, expected = deployable(torch.from_numpy(pixels))
    if not bool(torch.isfinite(expected).all()):  # finite weights, yet NaN: damaged statistics
        raise HistodetectError(
            "the model gives non-finite probabilities in PyTorch itself (damaged weights or "
            "normalisation statistics), so it was not exported; retrain it or export another."
        )
    session = OnnxBackend(onnx_path, "cpu").session
    got_logits, got = session.run([LOGITS_OUTPUT, PROBABILITY_OUTPUT], {INPUT_NAME: pixels})
    difference = float(np.abs(np.asarray(got) - expected.numpy()).max())
    reference = expected_logits.numpy()
    logit_error = np.abs(np.asarray(got_logits) - reference) / np.maximum(1.0, np.abs(reference))
    if int8_patches is None and not float(logit_error.max()) <= LOGIT_TOLERANCE:
        raise RuntimeError(
            f"the ONNX graph disagrees with PyTorch by {float(logit_error.max()):.2e} in logit "
            "(relative)."
        )
    if int8_patches is not None and not difference <= INT8_TOLERANCE:
        raise HistodetectError(f"int8 changed this model's probabilities by up to {difference:.3f} "
                               "on patches held out of --int8-calibration; export it without that option.")  # fmt: skip
    if int8_patches is None and not difference <= PARITY_TOLERANCE:
        raise RuntimeError(
            f"the ONNX graph disagrees with PyTorch by {difference:.2e} in probability."
        )
    return difference
