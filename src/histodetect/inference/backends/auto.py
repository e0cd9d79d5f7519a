"""`--precision auto` on a CPU without native bf16: a model.pt runs through ONNX Runtime where
that measures faster than PyTorch on this CPU.

On CPUs with AMX or AVX-512 BF16, PyTorch's fused bf16 graph is the fastest path this project
has, and it is kept. Elsewhere PyTorch runs fp32, and on an AVX2-only AMD EPYC ONNX Runtime's
fp32 kernels inferred the full-size models 1.3-1.9x faster than PyTorch's best fp32 graph,
while the write-up's model at its 32 px crop ran 0.7x as fast in one run and faster in
another (docs/BENCHMARKS.md): which one wins depends on the model, the CPU and the run. So the first time a model is opened on such a CPU it is
exported (the same graph `histodetect export` writes, checked against PyTorch within 1e-4 in
probability) into a cache folder, both paths score the same random patches (alternating
blocks of at least `PROBE_MIN_S`), and the faster one is used; unless other processes kept the
CPU busy meanwhile (`BUSY_CORES`), the verdict is cached beside the graph, keyed by the weights, the preprocessing,
the CPU, the thread count, the malloc setting (`hardware.keep_freed_memory`) and the library
versions, so later opens cost a file read.

Nothing changes for the caller: the same logits (within 1e-4 in probability), the same
`Predictor`; the PyTorch model stays loaded for Grad-CAM. Where the onnx extra is not
installed, the export fails or the cache cannot be written, PyTorch runs as before.
``HISTODETECT_CPU_ONNXRUNTIME=0`` never takes ONNX Runtime, ``=1`` always does (without
measuring); ``HISTODETECT_CACHE_DIR`` moves the cache (default ``~/.cache/histodetect``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histodetect import __version__
from histodetect.atomic import write_text_atomic
from histodetect.errors import HistodetectError
from histodetect.hardware import (
    busy_cpu_seconds,
    cpu_has_native_bf16,
    cpu_model_name,
    freed_memory_kept,
    usable_cores,
)
from histodetect.inference.backends import InferenceBackend
from histodetect.inference.backends.onnx import INSTALL_HINT, OnnxBackend
from histodetect.inference.backends.torch import TorchBackend
from histodetect.models.checkpoint import LoadedModel, weights_checksum

ENV_CPU_ONNXRUNTIME = "HISTODETECT_CPU_ONNXRUNTIME"
"""0: never run a model.pt through ONNX Runtime; 1: always (where `auto` picks fp32 on a CPU)."""
ENV_CACHE_DIR = "HISTODETECT_CACHE_DIR"
"""Folder for exported graphs and their timings (default ``$XDG_CACHE_HOME/histodetect`` or
``~/.cache/histodetect``)."""
MIN_SPEEDUP = 1.1
"""ONNX Runtime is taken only when it measures at least this much faster (PyTorch on a tie)."""
PROBE_PATCHES = 64
"""Random patches per call of each path."""
PROBE_MIN_S = 0.2
"""Each timed block repeats calls until it has run at least this long: one call of a small
model at its 32 px crop takes a few milliseconds, too short to time on a shared CPU."""
PROBE_SETTLE_S = 0.05
"""Pause before each timed block (see `_measure`)."""
PROBE_ROUNDS = 3
"""Alternating timed blocks of each path; the fastest block of each counts."""
BUSY_CORES = 0.5
"""Other processes (and hypervisor steal) took more than this many cores beyond those the
probe's threads leave free (mean, while the paths were timed): the verdict is used for this
run but not cached, so a contested moment does not decide for good. On a 2-core machine timed
with 2 threads that is half a core; on a 64-core server, load on the other 62 does not count."""


class OnnxCopyBackend(OnnxBackend):
    """ONNX Runtime on a graph exported from a PyTorch model, which stays loaded (Grad-CAM).

    Attributes:
        model: the PyTorch model the graph was exported from.
        timings: img/s of each path when it was measured (empty when forced).
    """

    model: torch.nn.Module
    timings: dict[str, float]


def cache_root() -> Path:
    """Where exported graphs and their timings are kept."""
    given = os.environ.get(ENV_CACHE_DIR)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "histodetect"


def onnxruntime_forced() -> bool | None:
    """HISTODETECT_CPU_ONNXRUNTIME: True (1), False (0) or None (unset: measure).

    Raises:
        HistodetectError: any other value.
    """
    value = os.environ.get(ENV_CPU_ONNXRUNTIME)
    if value in (None, ""):
        return None
    if value not in ("0", "1"):
        raise HistodetectError(f"{ENV_CPU_ONNXRUNTIME}={value!r} is not 0 or 1: set it to 0 or 1, "
                               "or unset it to let `auto` measure.")  # fmt: skip
    return value == "1"


def _onnx_extra_installed() -> bool:
    return all(
        importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript")
    )


def cache_key(loaded: LoadedModel, threads: int) -> str:
    """What decides the graph and which path is faster: weights, preprocessing, CPU, threads,
    versions."""
    import onnxruntime

    spec = loaded.spec
    parts = {
        "weights": weights_checksum(loaded.model.state_dict()),
        "network": [spec.model_name, spec.model_kwargs, spec.crop_px, spec.patch_size_px],
        "preprocessing": [list(spec.mean), list(spec.std)],
        "cpu": cpu_model_name(),
        "threads": threads,
        "keep_freed_memory": freed_memory_kept(),  # it changes PyTorch's speed (hardware.py)
        "versions": [__version__, torch.__version__, onnxruntime.__version__],
    }
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def faster_cpu_backend(
    loaded: LoadedModel, torch_backend: TorchBackend, requested_precision: str
) -> TorchBackend | OnnxCopyBackend:
    """`torch_backend`, or an ONNX Runtime copy of `loaded` where `auto` should take it.

    Only for `--precision auto` on a CPU without native bf16. Forced on
    (``HISTODETECT_CPU_ONNXRUNTIME=1``), a missing extra or a failed export is an error;
    otherwise any of them leaves PyTorch in place.

    Raises:
        HistodetectError: forced on, and the onnx extra is missing or the export fails.
    """
    forced = onnxruntime_forced()
    if (
        forced is False
        or requested_precision != "auto"
        or torch_backend.device.type != "cpu"
        or cpu_has_native_bf16()
    ):
        return torch_backend
    if not _onnx_extra_installed():
        if forced:
            raise HistodetectError(f"{ENV_CPU_ONNXRUNTIME}=1 needs the onnx extra: {INSTALL_HINT}.")
        return torch_backend
    try:
        return _onnx_copy(loaded, torch_backend, measure=not forced)
    except (HistodetectError, OSError, RuntimeError, ValueError, TypeError) as exc:
        if forced:
            raise HistodetectError(f"{ENV_CPU_ONNXRUNTIME}=1, but {loaded.path} cannot run in "
                                   f"ONNX Runtime here ({str(exc).strip()[:160]}).") from None  # fmt: skip
        return torch_backend


def _onnx_copy(
    loaded: LoadedModel, torch_backend: TorchBackend, *, measure: bool
) -> TorchBackend | OnnxCopyBackend:
    threads = torch.get_num_threads()
    folder = cache_root() / "onnx"
    key = cache_key(loaded, threads)
    graph, verdict_file = folder / f"{key}.onnx", folder / f"{key}.json"
    verdict = _read_verdict(verdict_file) if measure else None
    if verdict is not None and verdict["faster"] == "torch":
        return torch_backend
    if not graph.is_file():
        print(f"histodetect: exporting {loaded.path.name} to ONNX Runtime for this CPU "
              f"(once; cached in {folder})", file=sys.stderr)  # fmt: skip
        _export(loaded, graph)
    try:
        backend = _open(graph, threads, torch_backend)
    except HistodetectError:  # a damaged cache entry (a disk fault, a hand edit): export again
        _export(loaded, graph)
        backend = _open(graph, threads, torch_backend)
    if not measure:
        return backend
    if verdict is None:
        verdict = _measure(torch_backend, backend, loaded.spec.patch_size_px)
        if verdict["busy"]:
            print(f"histodetect: other processes took {verdict['other_cores']} cores while "
                  "PyTorch and ONNX Runtime were timed; this choice is not cached and is "
                  "measured again at the next open.", file=sys.stderr)  # fmt: skip
        else:
            write_text_atomic(verdict_file, json.dumps(verdict, indent=2) + "\n")
    backend.timings = {k: float(v) for k, v in verdict.items() if k.endswith("img_s")}
    if verdict["faster"] != "onnxruntime":
        return torch_backend
    speedup = verdict["onnxruntime_img_s"] / verdict["torch_img_s"]
    backend.description += f" (auto: {speedup:.1f}x torch fp32 on this CPU)"
    return backend


def _export(loaded: LoadedModel, graph: Path) -> None:
    """The graph `histodetect export` writes, from a copy of the model in the default layout."""
    from histodetect.export.onnx import export_loaded

    graph.parent.mkdir(parents=True, exist_ok=True)
    plain = copy.deepcopy(loaded.model).to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_loaded(dataclasses.replace(loaded, model=plain.eval()), graph)


def _open(graph: Path, threads: int, torch_backend: TorchBackend) -> OnnxCopyBackend:
    backend = OnnxCopyBackend(graph, "cpu", threads=threads)
    backend.model = torch_backend.model
    backend.timings = {}
    return backend


def _read_verdict(path: Path) -> dict[str, Any] | None:
    try:
        verdict = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(verdict, dict) and verdict.get("faster") in ("torch", "onnxruntime")
    rates_ok = ok and all(isinstance(verdict.get(k), int | float) and verdict[k] > 0
                          for k in ("torch_img_s", "onnxruntime_img_s"))  # fmt: skip
    return verdict if rates_ok else None


def _measure(torch_backend: TorchBackend, onnx_backend: OnnxBackend, size: int) -> dict[str, Any]:
    """img/s of both paths on the same random patches: a warm-up call each, then
    `PROBE_ROUNDS` alternating blocks of at least `PROBE_MIN_S` each, the fastest of each;
    and whether other processes contested the probe's cores meanwhile (`BUSY_CORES`)."""
    pixels = np.random.default_rng(0).integers(0, 256, (PROBE_PATCHES, size, size, 3), np.uint8)
    backends: dict[str, InferenceBackend] = {"torch": torch_backend, "onnxruntime": onnx_backend}
    best = dict.fromkeys(backends, 0.0)
    for backend in backends.values():
        backend.logits(pixels, False)
    started_busy, started_own, started = busy_cpu_seconds(), time.process_time(), time.monotonic()
    for _ in range(PROBE_ROUNDS):
        for name, backend in backends.items():
            # The other path's thread pool spins on after its block and slowed the first
            # calls of this one by up to 4x on a 2-vCPU machine: let it settle, call once
            # untimed, then time.
            time.sleep(PROBE_SETTLE_S)
            backend.logits(pixels, False)
            calls, block_started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - block_started) < PROBE_MIN_S or calls == 0:
                backend.logits(pixels, False)
                calls += 1
            best[name] = max(best[name], calls * PROBE_PATCHES / max(elapsed, 1e-9))
    other_cores = None
    if started_busy is not None and (ended_busy := busy_cpu_seconds()) is not None:
        others = (ended_busy - started_busy) - (time.process_time() - started_own)
        other_cores = round(max(0.0, others) / max(time.monotonic() - started, 1e-9), 2)
    threads = torch.get_num_threads()
    faster = "onnxruntime" if best["onnxruntime"] >= MIN_SPEEDUP * best["torch"] else "torch"
    return {"faster": faster, "torch_img_s": round(best["torch"], 1),
            "onnxruntime_img_s": round(best["onnxruntime"], 1), "patches": PROBE_PATCHES,
            "threads": threads, "cpu": cpu_model_name(), "other_cores": other_cores,
            "busy": contested(other_cores, threads)}  # fmt: skip


def contested(other_cores: float | None, threads: int) -> bool:
    """Whether other load of `other_cores` (None: unknown) took cores the probe's `threads`
    needed: more than `BUSY_CORES` beyond the cores they leave free."""
    if other_cores is None:
        return False
    return other_cores > BUSY_CORES + max(0, usable_cores() - threads)
