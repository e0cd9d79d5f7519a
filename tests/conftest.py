"""Shared fixtures: tiny generated images and datasets in tmp_path, and the real shared data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HISTODETECT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test, and every process a test starts, runs PyTorch models in PyTorch and caches
    nothing in the user's home: `auto`'s ONNX Runtime copy (an export and a timing per model,
    seconds each) is off unless a test turns it on (tests/inference/test_auto_backend.py)."""
    os.environ["HISTODETECT_CACHE_DIR"] = str(tmp_path_factory.mktemp("histodetect-cache"))
    os.environ["HISTODETECT_CPU_ONNXRUNTIME"] = "0"


@pytest.fixture(scope="session", autouse=True)
def _lightning_logs_to_the_session_stream() -> None:
    """Lightning gives its logger a StreamHandler on sys.stderr when first imported. Imported
    inside a test that captures output (capsys), the handler kept that test's stream, closed
    afterwards, and every later train printed "--- Logging error --- Traceback" (a subset such
    as tests/catalogue alone failed so; the whole suite imported Lightning at collection)."""
    import lightning.pytorch  # noqa: F401


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set HISTODETECT_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def subset_store(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The 23,000-patch pcam-subset ingested once per test session."""
    from histodetect.data.ingest import IngestOptions, ingest

    out = tmp_path_factory.mktemp("subset") / "store"
    store, _ = ingest(shared_data / "pcam-subset", out, IngestOptions(progress=False))
    return store
