"""int8 ONNX models: ONNX Runtime's static quantisation, calibrated on real patches.

Weights int8 per output channel in 7 bits (`reduce_range`), activations uint8 with ranges measured (min/max) on a few
hundred calibration patches, QOperator format (QLinearConv, QGemm), which ran fastest of
the formats tried on the CPU (docs/BENCHMARKS.md). Use it only where its AUC was checked:
on PCam valid patches it stayed within 0.002 of fp32.

Why 7-bit weights: on CPUs without VNNI (AVX2 only) ONNX Runtime computes uint8 x int8 with
VPMADDUBSW, whose 16-bit sums saturate for full-range weights, so a graph quantised with 8-bit
weights on a VNNI CPU gave probabilities off by up to 0.45 on an AVX2 one (the export's parity
check refused it there). 7-bit weights cannot saturate, so one file is right on every CPU;
int8 files written before carry no
`histodetect.inference.backends.onnx.INT8_WEIGHTS_KEY` and are refused on CPUs without VNNI.

"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from histodetect.atomic import scratch_dir
from histodetect.errors import HistodetectError
from histodetect.inference.backends.onnx import INPUT_NAME

CALIBRATION_PATCHES = 256
"""Patches whose activations set the int8 ranges (more changed nothing measurable)."""
CALIBRATION_BATCH = 32


def calibration_patches(
    inputs: Sequence[str | Path], patch_size_px: int, n: int = CALIBRATION_PATCHES
) -> np.ndarray:
    """Up to `n` patches spread evenly over every input predict accepts (files, folders, stores).

    Returns:
        uint8 (m, S, S, 3), m <= n.

    Raises:
        HistodetectError: When the inputs hold no readable patch of the model's size.
    """
    from histodetect.inference.inputs import collect_inputs, iter_batches

    groups = collect_inputs(inputs)
    step = max(1, sum(group.n_patches for group in groups) // n)
    chosen = []
    for group in groups:
        if group.kind == "files":  # thin the list before decoding: only chosen files are read
            group, keep_every = replace(group, files=group.files[::step]), 1
        else:
            keep_every = step
        seen = 0
        for batch in iter_batches([group], patch_size_px, workers=1):
            rows = np.arange(seen, seen + len(batch.pixels))
            chosen.append(batch.pixels[rows % keep_every == 0])
            seen += len(batch.pixels)
    pixels = np.concatenate(chosen) if chosen else np.zeros((0,), np.uint8)
    if len(pixels) > n:  # up to 2n were kept: thin evenly, not the first n (the first input)
        pixels = pixels[np.linspace(0, len(pixels) - 1, n).round().astype(int)]
    if not len(pixels):
        raise HistodetectError(f"--int8-calibration found no readable {patch_size_px} px "
                               "patches to calibrate on; give patches like the training data.")  # fmt: skip
    return pixels


class _Batches:
    """onnxruntime.quantization.CalibrationDataReader over an array of patches."""

    def __init__(self, pixels: np.ndarray) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(
            {INPUT_NAME: pixels[i : i + CALIBRATION_BATCH]}
            for i in range(0, len(pixels), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantiser logs advice at WARNING on the root logger; keep the CLI's output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """Write an int8 copy of the fp32 graph `fp32` to `out`, keeping its metadata.

    Args:
        calibration: uint8 (n, S, S, 3) patches whose activations set the int8 ranges.
    """
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet(), scratch_dir(out) as scratch:
        prepared = scratch / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        q.quantize_static(
            str(prepared),
            str(out),
            _Batches(calibration),
            quant_format=q.QuantFormat.QOperator,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            per_channel=True,
            calibrate_method=q.CalibrationMethod.MinMax,
            reduce_range=True,
        )
