"""The ONNX Runtime backend: an exported model.onnx, whose graph holds the preprocessing.

Imports neither torch nor Lightning (checked by a test), so a deployment that runs only
.onnx models needs onnxruntime and numpy. The graph takes uint8 (n, S, S, 3) RGB pixels and
gives raw logits (n,); the ModelSpec rides in the model's metadata (`read_metadata`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from histodetect.errors import HistodetectError
from histodetect.inference.backends import N_TTA_VIEWS, d4_view_nhwc

ONNX_SUFFIX = ".onnx"
INPUT_NAME = "pixels"
"""Graph input: uint8 (batch, S, S, 3) RGB patches."""
LOGITS_OUTPUT = "logits"
"""Graph output: float32 (batch,) raw logits."""
PROBABILITY_OUTPUT = "probability"
"""Graph output: float32 (batch,) calibrated tumour probability sigmoid(logit / temperature)."""
FORMAT_KEY, FORMAT = "histodetect_format", "histodetect-onnx"
FORMAT_VERSION_KEY, FORMAT_VERSION = "histodetect_format_version", "2"
UNSEALED_FORMAT_VERSION = "1"
"""Version 2 (8 Dec) is version 1 that is always sealed (`CONTENT_KEY`): a version-2 file without
a readable seal is damaged, where a version-1 file without one may predate the seal."""
READABLE_FORMAT_VERSIONS = (UNSEALED_FORMAT_VERSION, FORMAT_VERSION)
SPEC_KEY = "model_spec"
"""Metadata key of the ModelSpec as JSON (`ModelSpec.to_dict`): the one the backend reads."""
MODEL_METADATA_KEY = "model_metadata"
"""Metadata key of the source model's metadata as JSON (calibration, training provenance)."""
INT8_WEIGHTS_KEY, INT8_WEIGHTS = "int8_weights", "7-bit (reduce_range)"
"""Metadata of int8 graphs whose weights cannot saturate the 16-bit sums of CPUs without VNNI
(`histodetect.export.quantize`); int8 graphs without it are refused on such CPUs."""
INSTALL_HINT = "pip install -c constraints.txt -e '.[onnx]'"


def is_onnx_path(path: Path | str | None) -> bool:
    """True when `path` names an ONNX model file (by its suffix)."""
    return path is not None and Path(path).suffix.lower() == ONNX_SUFFIX


def require_onnxruntime() -> ModuleType:
    """Import onnxruntime, or say which extra installs it.

    Raises:
        HistodetectError: When onnxruntime is not installed.
    """
    try:
        import onnxruntime
    except ImportError:
        raise HistodetectError(
            f"running .onnx models needs onnxruntime: {INSTALL_HINT} (or pip install onnxruntime)."
        ) from None
    return onnxruntime


def providers_for(device: str, available: list[str]) -> list[str]:
    """ONNX Runtime execution providers for a `--device` name.

    Raises:
        HistodetectError: CUDA asked for where ONNX Runtime has no CUDA provider.
    """
    has_cuda = "CUDAExecutionProvider" in available
    if device.startswith("cuda") and not has_cuda:
        raise HistodetectError(f"--device {device} needs ONNX Runtime's CUDA provider, which this "
                               "installation lacks (pip install onnxruntime-gpu); use --device cpu.")  # fmt: skip
    if device == "cpu" or not has_cuda:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def read_metadata(path: Path, metadata: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ModelSpec dict and the source model's metadata from an ONNX model's metadata_props.

    Raises:
        HistodetectError: When the file was not exported by histodetect (or by a newer one).
    """
    if metadata.get(FORMAT_KEY) != FORMAT or SPEC_KEY not in metadata:
        raise HistodetectError(f"{path} is an ONNX model without histodetect metadata; "
                               "export it with `histodetect export MODEL --format onnx`.")  # fmt: skip
    if metadata.get(FORMAT_VERSION_KEY) not in READABLE_FORMAT_VERSIONS:
        raise HistodetectError(f"{path} was exported in histodetect ONNX format version "
                               f"{metadata.get(FORMAT_VERSION_KEY)}; this version reads {' and '.join(READABLE_FORMAT_VERSIONS)}: upgrade histodetect.")  # fmt: skip
    try:
        spec = json.loads(metadata[SPEC_KEY])
        extra = json.loads(metadata.get(MODEL_METADATA_KEY, "{}"))
    except json.JSONDecodeError:
        raise HistodetectError(
            f"{path} has damaged histodetect metadata; export it again."
        ) from None
    if not isinstance(spec, dict) or not isinstance(extra, dict):
        raise HistodetectError(f"{path} has damaged histodetect metadata; export it again.")
    return spec, extra


def on_gpu_provider(session: Any) -> bool:
    """True when the session runs on ONNX Runtime's CUDA provider."""
    return bool(session.get_providers()[0] == "CUDAExecutionProvider")


def check_int8_portable(path: Path, metadata: dict[str, str]) -> None:
    """Refuse an int8 graph with full-range weights on a CPU without VNNI, where they saturate.

    Raises:
        HistodetectError: When `path` is such a graph and this CPU lacks VNNI.
    """
    from histodetect.hardware import cpu_has_vnni

    if metadata.get("precision") != "int8" or INT8_WEIGHTS_KEY in metadata or cpu_has_vnni():
        return
    raise HistodetectError(
        f"{path} is an int8 model with full-range weights, which this CPU (no VNNI) computes "
        "with overflow (wrong probabilities); export it again with this histodetect version, "
        "or export it without --int8-calibration."
    )


CONTENT_KEY = "content_sha256"
"""Metadata key of the SHA-256 of the whole file, taken with this value set to `UNSEALED`."""
UNSEALED = "0" * 64
_CONTENT_ENTRY = re.compile(
    rb"\x0a" + bytes([len(CONTENT_KEY)]) + CONTENT_KEY.encode() + rb"\x12\x40([0-9a-f]{64})"
)  # the serialised metadata_props entry (key = field 1, value = field 2, 64 bytes)


def seal(path: Path) -> None:
    """Write the file's own SHA-256 into its `CONTENT_KEY` entry (exported as `UNSEALED`).

    The value has a fixed length, so writing it changes no other byte; `check_sealed` hashes
    the file with the value set back to `UNSEALED`. Needs no `onnx` package.
    """
    data = path.read_bytes()
    entries = list(_CONTENT_ENTRY.finditer(data))
    if len(entries) != 1 or entries[0].group(1) != UNSEALED.encode():
        raise RuntimeError(f"{path} holds {len(entries)} unsealed {CONTENT_KEY} entries, not 1.")
    start, end = entries[0].span(1)
    digest = hashlib.sha256(data).hexdigest().encode()
    path.write_bytes(data[:start] + digest + data[end:])


def _unsealed_sha256(data: bytes, entry: re.Match[bytes]) -> str:
    """The SHA-256 of `data` with the seal `entry`'s value set back to `UNSEALED`."""
    start, end = entry.span(1)
    return hashlib.sha256(data[:start] + UNSEALED.encode() + data[end:]).hexdigest()


def check_sealed(path: Path, data: bytes, metadata: dict[str, str]) -> None:
    """Refuse an exported file (`data`, the bytes of `path`; `metadata`, its metadata_props as
    ONNX Runtime read them) changed since export (a disk fault, a cut copy, a hand edit): ONNX
    Runtime loads changed weights without a word, and predict scored them. A version-1 file
    without a seal entry is taken as it is (exported before the seal); a seal entry that cannot
    be read (damage on the entry itself) is damage, in a file of either version."""
    if metadata.get(FORMAT_KEY) != FORMAT:
        return  # not a histodetect export: `read_metadata` refuses it in its own words
    entries = list(_CONTENT_ENTRY.finditer(data))
    version = metadata.get(FORMAT_VERSION_KEY)
    if not entries and CONTENT_KEY not in metadata and version == UNSEALED_FORMAT_VERSION:
        return  # exported before the seal
    if len(entries) != 1 or _unsealed_sha256(data, entries[0]) != entries[0].group(1).decode():
        raise HistodetectError(
            f"{path} is damaged: its bytes no longer match the checksum written when it was "
            "exported; export it again with `histodetect export MODEL --format onnx --out "
            "FILE.onnx`."
        )


class OnnxBackend:
    """An exported model.onnx in an ONNX Runtime session.

    Args:
        path: the .onnx file written by `histodetect export`.
        device: "auto" (CUDA provider when installed and usable), "cpu" or "cuda".
        threads: CPU threads per inference call; None lets ONNX Runtime take one per core.

    Attributes:
        spec_dict: the ModelSpec as a dict (`ModelSpec.from_dict` rebuilds it).
        metadata: the source model's metadata (calibration, training provenance).
        patch_size_px: side of the square uint8 patches the graph takes.
    """

    def __init__(self, path: Path, device: str = "auto", threads: int | None = None) -> None:
        ort = require_onnxruntime()
        if not path.is_file():
            raise HistodetectError(f"model {path} does not exist.")
        data = path.read_bytes()  # read once: handed to ONNX Runtime, then its seal checked
        providers = providers_for(device, list(ort.get_available_providers()))
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(data, options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable graphs
            raise HistodetectError(f"{path} cannot be loaded by ONNX Runtime "
                                   f"({str(exc).strip()[:160]}); check that the file is complete, "
                                   "or export it again with `histodetect export MODEL --format "
                                   "onnx --out FILE.onnx`.") from None  # fmt: skip
        self.path = path
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        check_sealed(path, data, meta)
        self.spec_dict, self.metadata = read_metadata(path, meta)
        if not on_gpu_provider(self.session):
            check_int8_portable(path, meta)
        self.patch_size_px = int(self.spec_dict.get("patch_size_px", 96))
        on_gpu = on_gpu_provider(self.session)
        self.device_name = "cuda" if on_gpu else "cpu"
        self.description = f"{self.device_name}, onnxruntime {ort.__version__}"

    def logits(self, pixels: np.ndarray, tta: bool) -> np.ndarray:
        """Raw logits, float32 (n,) or (n, 8) with TTA, of uint8 (n, S, S, 3) patches."""
        self._check(pixels)
        if not tta:
            return self._run(pixels)
        if not len(pixels):
            return np.zeros((0, N_TTA_VIEWS), dtype=np.float32)
        views = [self._run(d4_view_nhwc(pixels, k)) for k in range(N_TTA_VIEWS)]
        return np.stack(views, axis=1)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        if not len(pixels):
            return np.zeros((0,), dtype=np.float32)
        feed = {INPUT_NAME: np.ascontiguousarray(pixels)}
        (logits,) = self.session.run([LOGITS_OUTPUT], feed)
        return np.asarray(logits, dtype=np.float32).reshape(len(pixels))

    def _check(self, pixels: np.ndarray) -> None:
        size = self.patch_size_px
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[3] != 3:
            raise HistodetectError(
                f"Expected uint8 patches of shape (N, H, W, 3), got {pixels.dtype} of shape "
                f"{tuple(pixels.shape)}."
            )
        if pixels.shape[1:3] != (size, size):
            raise HistodetectError(
                f"Expected {size}x{size} px patches as the model was trained on, "
                f"got {pixels.shape[1]}x{pixels.shape[2]}."
            )
