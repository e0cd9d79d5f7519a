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
CPU_NHWC_FP32_FLAGS = ("avx2",)
"""CPU flags under which oneDNN's fp32 convolutions run faster on channels_last (NHWC) tensors."""
ENV_CPU_NHWC = "HISTODETECT_CPU_NHWC"
"""Set to 0 or 1 to override whether fp32 inference on this CPU runs channels_last (NHWC)."""
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


def _detected(env: str, flags: tuple[str, ...]) -> bool:
    """True when the CPU reports any of `flags`, unless the environment variable `env` is 0/1."""
    forced = os.environ.get(env)
    if forced in ("0", "1"):
        return forced == "1"
    if forced:  # a typo ("yes", "true") was silently ignored and the CPU's flags used instead
        raise HistodetectError(
            f"{env}={forced!r} is not 0 or 1: set it to 0 or 1, or unset it to use the CPU's flags."
        )
    return any(flag in _cpuinfo_flags() for flag in flags)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX or AVX-512 BF16), read from its flags.

    Detected, never guessed from the vendor: without these flags bf16 autocast is emulated
    and slower than fp32. ``HISTODETECT_CPU_BF16=0|1`` overrides the detection.
    """
    return _detected(ENV_CPU_BF16, CPU_BF16_FLAGS)


def cpu_has_vnni() -> bool:
    """True when the CPU has VNNI int8 dot products (AVX-512 VNNI, AVX-VNNI or AMX int8).

    Without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with VPMADDUBSW,
    whose 16-bit intermediate sums saturate when weights use the full int8 range: the same
    int8 graph then gives other probabilities (off by 0.45 for the bundled model on an AVX2
    CPU). ``HISTODETECT_CPU_VNNI=0|1`` overrides the detection.
    """
    return _detected(ENV_CPU_VNNI, CPU_VNNI_FLAGS)


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


def use_channels_last(device_type: str, precision: str, *, training: bool = False) -> bool:
    """channels_last where it measures faster: GPUs, CPU bf16, and CPU fp32 inference on x86
    with AVX2.

    oneDNN's fast CPU kernels are NHWC. In fp32 on a 2-vCPU AMD EPYC with AVX2 and no AVX-512
    (docs/BENCHMARKS.md) the bundled model inferred 1.6x faster channels_last (as a frozen
    graph) than in the default layout. fp32 *training* keeps the default layout: there,
    oneDNN's AVX2 1x1-convolution weight gradient on NHWC tensors spun forever (a tiny
    histonet's shortcut convs, torch 2.13.0), and a hung run is worse than a slower one. CPUs
    without AVX2 keep the default layout, which has not been measured slower there.
    ``HISTODETECT_CPU_NHWC=0|1`` overrides the choice for CPU fp32 inference.
    """
    if device_type == "cuda" or precision == "bf16-mixed":
        return True
    if training:
        return False
    return device_type == "cpu" and _detected(ENV_CPU_NHWC, CPU_NHWC_FP32_FLAGS)


def autocast(device_type: str, precision: str) -> AbstractContextManager[object]:
    """The autocast context for a resolved precision (a no-op for `32-true`)."""
    if precision == "bf16-mixed":
        import torch

        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()
