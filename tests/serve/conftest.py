"""Fixtures for the service: the bundled model, real PCam valid patches, an app and its client."""

from __future__ import annotations

import importlib.util
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from histodetect.inference.predictor import Predictor
from histodetect.serve.limits import ServeLimits

if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("multipart") is None:
    collect_ignore_glob = ["test_*.py"]  # the serve extra is not installed: nothing to test


class CountingPredictor(Predictor):
    """The bundled model, counting forward passes (calls of predict_pixels) and their sizes;
    `delay_s` makes each pass slower so that concurrent requests pile up behind it."""

    def __init__(self, inner: Predictor, delay_s: float = 0.0) -> None:
        self.__dict__.update(vars(inner))
        self.delay_s = delay_s
        self.calls: list[int] = []
        self.threads: set[str] = set()

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.calls.append(len(pixels))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return super().predict_pixels(pixels)


@pytest.fixture(scope="session")
def bundled() -> Predictor:
    return Predictor(device="cpu")


@pytest.fixture(scope="session")
def valid_patches(shared_data: Path) -> list[Path]:
    """Twelve real PCam valid patches, six of each class, spread over the folders."""
    valid = shared_data / "pcam-subset" / "valid"
    return [p for c in ("0", "1") for p in sorted((valid / c).glob("*.jpg"))[::250][:6]]


@pytest.fixture
def make_client(bundled: Predictor) -> Iterator[Callable[..., Any]]:
    """make_client(predictor=None, limits=None, **create_app kwargs) -> a started TestClient."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette prefers httpx2 to httpx; both work
        from fastapi.testclient import TestClient

    from histodetect.serve.app import create_app

    clients: list[Any] = []

    def make(
        predictor: Predictor | None = None, limits: ServeLimits | None = None, **kwargs: Any
    ) -> Any:
        app = create_app(predictor or bundled, limits, **kwargs)
        client = TestClient(app, raise_server_exceptions=False)
        clients.append(client.__enter__())
        return clients[-1]

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def upload(
    path: Path, name: str | None = None, field: str = "files"
) -> tuple[str, tuple[str, bytes, str]]:
    """A multipart file field with a real file's bytes."""
    return field, (name or path.name, path.read_bytes(), "application/octet-stream")
