"""What the machine can do fast: native bf16 on the CPU, and the precision/layout to use.

torch is imported only inside the functions that need it: an ONNX deployment imports this module
without torch installed.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from histodetect.errors import HistodetectError

if TYPE_CHECKING:
    from torch import nn

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
CPU_NHWC_FP32_TRAINING_UNMEASURED = frozenset({"avx512f"})
"""CPU flags under which channels_last fp32 training has not been measured (the default layout)."""
ENV_CPU_NHWC = "HISTODETECT_CPU_NHWC"
"""Set to 0 or 1 to override whether fp32 on this CPU runs channels_last (NHWC), for inference
and, where the model allows it (`nhwc_fp32_training_is_safe`), training."""
ENV_KEEP_FREED_MEMORY = "HISTODETECT_KEEP_FREED_MEMORY"
"""Set to 0 to leave glibc's malloc at its defaults (see `keep_freed_memory`)."""
PRECISIONS = ("auto", "32-true", "bf16-mixed")
"""Precisions every command accepts; `auto` picks per device with `auto_precision`."""


@functools.lru_cache(maxsize=4)
def _cpuinfo_field(name: str) -> str | None:
    """The first value of `name` in /proc/cpuinfo, or None (not Linux, or no such field)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.split(":")[0].strip() == name:
            return line.partition(":")[2].strip()
    return None


def _cpuinfo_flags() -> frozenset[str]:
    # Not Linux: no reliable flag list, assume no native bf16.
    return frozenset((_cpuinfo_field("flags") or "").split())


def cpu_model_name() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (else what `platform` knows)."""
    import platform

    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


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


def use_channels_last(
    device_type: str, precision: str, *, training: bool = False, model: nn.Module | None = None
) -> bool:
    """channels_last where it measures faster: GPUs, CPU bf16, CPU fp32 inference on x86 with
    AVX2, and CPU fp32 training on AVX2 CPUs without AVX-512 for models oneDNN trains right.

    oneDNN's fast CPU kernels are NHWC. In fp32 on a 2-vCPU AMD EPYC with AVX2 and no AVX-512
    (docs/BENCHMARKS.md) the bundled model inferred 1.6x faster channels_last (as a frozen
    graph) than in the default layout, a training step of the write-up's CNN ran 1.3-1.7x
    faster, and the default histocnn trained 1.2x faster end to end (all measured before
    `keep_freed_memory`, which sped the default layout up most). fp32 *training* needs
    `model`: it runs channels_last only when `nhwc_fp32_training_is_safe(model)` (oneDNN's
    AVX2 weight gradient of strided 1x1 convs with few input channels is wrong, hangs or
    crashes on NHWC tensors), and not on AVX-512 CPUs, where it has not been measured. CPUs
    without AVX2 keep the default layout. ``HISTODETECT_CPU_NHWC=0|1`` overrides the CPU's
    flags (not the model check).
    """
    if device_type == "cuda" or precision == "bf16-mixed":
        return True
    if device_type != "cpu" or not _detected(ENV_CPU_NHWC, CPU_NHWC_FP32_FLAGS):
        return False
    if not training:
        return True
    measured = os.environ.get(ENV_CPU_NHWC) == "1" or not (
        CPU_NHWC_FP32_TRAINING_UNMEASURED & _cpuinfo_flags()
    )
    return measured and model is not None and nhwc_fp32_training_is_safe(model)


def nhwc_fp32_training_is_safe(model: nn.Module) -> bool:
    """False when `model` has a convolution oneDNN's fp32 kernels train wrong on NHWC tensors.

    Measured on an AVX2-only AMD EPYC (torch 2.13.0, oneDNN's `jit_avx2_1x1_convolution_bwd_
    weights_t`): the weight gradient of a 1x1 convolution with stride 2 and 2 to 7 input
    channels on channels_last tensors came out wrong (relative error 0.3-4.7), hung or
    segfaulted, depending on the size; NCHW, 3x3 kernels, stride 1 and 1 or 8+ input channels
    were right. On an AMD EPYC Zen 4 (AVX-512) the same backward segfaulted with 2 to 15 input
    channels at some sizes and was right with 1 or 16+. So: no strided 1x1 convolution with
    fewer input channels than a SIMD register holds fp32 values (8 with AVX2, 16 with
    AVX-512), and no grouped convolutions (not measured).
    """
    from torch import nn

    register = 16 if "avx512f" in _cpuinfo_flags() else 8
    for module in model.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        if module.groups != 1:
            return False
        strided = any(s > 1 for s in module.stride)
        if module.kernel_size == (1, 1) and strided and module.in_channels < register:
            return False
    return True


def autocast(device_type: str, precision: str) -> AbstractContextManager[object]:
    """The autocast context for a resolved precision (a no-op for `32-true`)."""
    if precision == "bf16-mixed":
        import torch

        return torch.autocast(device_type, dtype=torch.bfloat16)
    return nullcontext()


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
"""glibc mallopt parameters (malloc.h)."""


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory of freed large tensors for the next ones; True when set.

    By default glibc serves every block of 32 MB or more with its own mmap and returns it to
    the kernel on free, so each training step and inference batch, whose activations are such
    blocks (a batch of 128 at 96 px: 145 MB for the first conv's output), faults fresh pages in
    again: measured on an AVX2-only AMD EPYC (one thread, torch 2.13.0), 1.2-1.4x slower training
    steps and inference batches than with the memory kept (docs/BENCHMARKS.md). With
    mmap off (M_MMAP_MAX 0) and trimming only above 2 GB of free heap, freed blocks are
    reused; the process keeps its peak memory instead of returning it. What jemalloc or
    tcmalloc give PyTorch when preloaded, without preloading anything. Every `histodetect`
    command calls it at start; Python users can call it first thing. Linux with glibc only
    (a no-op elsewhere); ``HISTODETECT_KEEP_FREED_MEMORY=0`` leaves malloc alone.
    """
    value = os.environ.get(ENV_KEEP_FREED_MEMORY, "")
    if value not in ("", "0", "1"):  # a typo must not silently leave it on
        raise HistodetectError(f"{ENV_KEEP_FREED_MEMORY}={value!r} is not 0 or 1: set it to 0 to "
                               "leave malloc at its defaults, or unset it.")  # fmt: skip
    if value == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl's mallopt does nothing
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1)


def freed_memory_kept() -> bool:
    """True when `keep_freed_memory` has been called in this process and took effect."""
    return keep_freed_memory.cache_info().currsize > 0 and keep_freed_memory()


def busy_cpu_seconds(stat: Path = Path("/proc/stat")) -> float | None:
    """CPU seconds all cores have spent busy since boot (user, nice, system, irq, softirq and
    hypervisor steal, from /proc/stat; not idle or iowait); None where there is no /proc (not
    Linux). The difference over an interval, less the process's own `time.process_time()`, is
    what other processes (and the hypervisor) took."""
    try:
        first = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if first[:1] != ["cpu"] or len(first) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
