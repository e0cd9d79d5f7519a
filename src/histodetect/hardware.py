"""What the machine can do fast: native bf16 on the CPU, and the precision/layout to use.

torch is imported only inside the functions that need it: an ONNX deployment imports this module
without torch installed.
"""

from __future__ import annotations

import functools
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from histodetect.errors import HistodetectError

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU feature flags (as Linux names them in /proc/cpuinfo) that mean native bf16 matmuls."""
CPU_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""CPU feature flags that mean int8 dot products without 16-bit intermediate sums (VNNI)."""
ENV_CPU_VNNI = "HISTODETECT_CPU_VNNI"
"""Set to 0 or 1 to override the VNNI detection (tests, or a CPU whose flags are hidden)."""
ENV_CPU_BF16 = "HISTODETECT_CPU_BF16"
"""Set to 0 or 1 to override the detection (tests, or a CPU whose flags are hidden)."""
PRECISIONS = ("auto", "32-true", "bf16-mixed")
"""Precisions every command accepts; `auto` picks per device with `auto_precision`."""


@functools.lru_cache(maxsize=1)
def _cpuinfo_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()  # not Linux: no reliable flag list, assume no native bf16
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX or AVX-512 BF16), read from its flags.

    Detected, never guessed from the vendor: without these flags bf16 autocast is emulated
    and slower than fp32. ``HISTODETECT_CPU_BF16=0|1`` overrides the detection.
    """
    forced = os.environ.get(ENV_CPU_BF16)
    if forced in ("0", "1"):
        return forced == "1"
    return any(flag in _cpuinfo_flags() for flag in CPU_BF16_FLAGS)


def cpu_has_vnni() -> bool:
    """True when the CPU has VNNI int8 dot products (AVX-512 VNNI, AVX-VNNI or AMX int8).

    Without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with VPMADDUBSW,
    whose 16-bit intermediate sums saturate when weights use the full int8 range: the same
    int8 graph then gives other probabilities (off by 0.45 for the bundled model on an AVX2
    CPU). ``HISTODETECT_CPU_VNNI=0|1`` overrides the detection.
    """
    forced = os.environ.get(ENV_CPU_VNNI)
    if forced in ("0", "1"):
        return forced == "1"
    return any(flag in _cpuinfo_flags() for flag in CPU_VNNI_FLAGS)


def auto_precision(device_type: str) -> str:
    """`bf16-mixed` on a CUDA GPU with bf16 or a CPU with native bf16, else `32-true`."""
    if device_type == "cuda":
        import torch

        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def resolve_precision(requested: str, device_type: str) -> str:
    """Turn a `--precision` value into a concrete one for a device type (`cpu` or `cuda`).

    Raises:
        HistodetectError: If the value is not one of `PRECISIONS`.
    """
    if requested not in PRECISIONS:
        raise HistodetectError(f"--precision {requested!r} is not one of {', '.join(PRECISIONS)}.")
    return auto_precision(device_type) if requested == "auto" else requested


def use_channels_last(device_type: str, precision: str) -> bool:
    """channels_last pays on GPUs and with CPU bf16 (oneDNN's fast kernels are NHWC)."""
    return device_type == "cuda" or precision == "bf16-mixed"


def autocast(device_type: str, precision: str) -> AbstractContextManager[object]:
    """The autocast context for a resolved precision (a no-op for `32-true`)."""
    if precision == "bf16-mixed":
        import torch

        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()
