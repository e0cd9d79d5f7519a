"""Micro-batching: concurrent requests share forward passes; the queue is bounded; the model
only ever runs on the batcher's worker thread."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from histodetect.inference.predictor import Predictor
from histodetect.serve.app import create_app
from histodetect.serve.batching import MicroBatcher, QueueFullError
from histodetect.serve.limits import ServeLimits
from serve.conftest import CountingPredictor


async def _concurrent_predicts(app: Any, files: list[Path], n: int) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve.test") as client:
        payloads = [files[i % len(files)] for i in range(n)]
        return await asyncio.gather(
            *(
                client.post(
                    "/v1/predict", files=[("files", (p.name, p.read_bytes(), "image/jpeg"))]
                )
                for p in payloads
            )
        )


@pytest.mark.parametrize("batching", [True, False])
def test_fifty_concurrent_requests_share_forward_passes(
    bundled: Predictor, valid_patches: list[Path], batching: bool
) -> None:
    counting = CountingPredictor(bundled, delay_s=0.02)
    app = create_app(counting, ServeLimits(max_wait_ms=20, batching=batching))
    responses = asyncio.run(_concurrent_predicts(app, valid_patches, 50))
    assert all(r.status_code == 200 for r in responses), responses[0].text
    app.state.context.batcher.close()
    assert sum(counting.calls) == 50
    if batching:
        assert len(counting.calls) <= 10, counting.calls  # far fewer than one pass per request
        assert max(counting.calls) >= 5
    else:
        assert counting.calls == [1] * 50
    assert counting.threads == {"micro-batcher"}
    # every client got its own patch's probability, as if it had been alone
    alone = dict(
        zip(
            (p.name for p in valid_patches),
            bundled.predict_pixels(_pixels(valid_patches)),
            strict=True,
        )
    )
    for i, response in enumerate(responses):
        expected = alone[valid_patches[i % len(valid_patches)].name]
        assert response.json()["predictions"][0]["probability"] == pytest.approx(expected, abs=1e-6)


def _pixels(paths: list[Path]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def _blocked_batcher(**kwargs: Any) -> tuple[MicroBatcher, threading.Event, list[int]]:
    """A batcher whose model waits for `release` before each pass, and the sizes it saw."""
    release = threading.Event()
    sizes: list[int] = []

    def predict(pixels: np.ndarray) -> np.ndarray:
        release.wait(5)
        sizes.append(len(pixels))
        return np.full(len(pixels), 0.5)

    return MicroBatcher(predict, **kwargs), release, sizes


def test_the_queue_is_bounded_and_drains() -> None:
    batcher, release, sizes = _blocked_batcher(max_batch=4, max_wait_s=0.0, max_queue=6)
    patch = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    running = batcher.submit(patch)
    time.sleep(0.1)  # the worker has taken it and waits inside the model
    queued = [batcher.submit(np.repeat(patch, 3, axis=0)) for _ in range(2)]
    assert batcher.queued_patches == 6
    with pytest.raises(QueueFullError):
        batcher.submit(patch)
    with pytest.raises(QueueFullError):
        batcher.call(lambda: None)
    slide_batch = batcher.submit(patch, bounded=False)  # slide jobs wait instead of failing
    release.set()
    assert running.result(5).tolist() == [0.5]
    assert [len(f.result(5)) for f in queued] == [3, 3]
    assert len(slide_batch.result(5)) == 1
    assert sizes[0] == 1 and sum(sizes) == 8 and max(sizes) <= 4
    assert batcher.queued_patches == 0
    batcher.close()
    with pytest.raises(QueueFullError, match="shutting down"):
        batcher.submit(patch)


def test_exclusive_calls_run_between_batches_and_errors_reach_every_request() -> None:
    calls: list[str] = []

    def predict(pixels: np.ndarray) -> np.ndarray:
        calls.append(f"predict {len(pixels)}")
        if pixels.any():
            raise ValueError("broken model")
        return np.zeros(len(pixels))

    batcher = MicroBatcher(predict, max_batch=8, max_wait_s=0.05)
    zeros = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    first = batcher.submit(zeros)
    explained = batcher.call(lambda: calls.append("explain") or "done")
    second = batcher.submit(zeros)
    assert first.result(5).shape == (2,) and explained.result(5) == "done"
    assert second.result(5).shape == (2,)
    assert calls == ["predict 2", "explain", "predict 2"]  # the call is never inside a batch
    ones = np.ones((1, 4, 4, 3), dtype=np.uint8)
    with batcher.arriving():  # a second request on its way: the two share the failing pass
        with batcher.arriving():
            first_failing = batcher.submit(ones)
        failing = [first_failing, batcher.submit(zeros)]
    for future in failing:
        with pytest.raises(ValueError, match="broken model"):
            future.result(5)
    assert batcher.submit(zeros).result(5).shape == (2,)  # the worker survives
    batcher.close()


def test_a_lone_request_does_not_wait_for_company_that_is_not_coming() -> None:
    sizes: list[int] = []

    def predict(pixels: np.ndarray) -> np.ndarray:
        sizes.append(len(pixels))
        return np.zeros(len(pixels))

    batcher = MicroBatcher(predict, max_batch=8, max_wait_s=2.0)
    patch = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    start = time.monotonic()
    batcher.submit(patch).result(5)
    assert time.monotonic() - start < 1.0  # not the 2 s max wait: nobody else was on the way
    start = time.monotonic()
    with batcher.arriving():  # request B, still decoding
        with batcher.arriving():  # request A
            first = batcher.submit(patch)
        time.sleep(0.2)
        second = batcher.submit(patch)
    assert first.result(5).shape == second.result(5).shape == (1,)
    assert time.monotonic() - start < 1.5  # B's arrival ended the wait, not the 2 s cap
    assert sizes == [1, 2]  # A waited for B and they shared one pass
    batcher.close()


def test_a_failure_of_the_batcher_itself_reaches_the_request_and_the_worker_lives_on() -> None:
    """From a review: an infinite max wait made Condition.wait raise OverflowError on the
    worker thread, which died; its request and every later one waited for ever."""

    def predict(pixels: np.ndarray) -> np.ndarray:
        return np.zeros(len(pixels))

    batcher = MicroBatcher(predict, max_batch=8, max_wait_s=float("inf"))
    patch = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    with batcher.arriving():  # someone on the way: the worker waits for company, and fails
        with batcher.arriving():
            waiting = batcher.submit(patch)
        with pytest.raises(OverflowError):
            waiting.result(5)
    assert batcher.queued_patches == 0
    assert batcher.submit(patch).result(5).shape == (1,)  # the worker survives
    batcher.close()


@pytest.mark.parametrize(
    "limits, says",
    [({"max_wait_ms": float("inf")}, "--max-wait-ms must lie in 0..10,000"),
     ({"max_wait_ms": float("nan")}, "--max-wait-ms"),
     ({"max_upload_mb": float("inf")}, "--max-upload-mb must be a positive number of MB"),
     ({"max_slide_mb": float("nan")}, "--max-slide-mb")],
)  # fmt: skip
def test_limits_that_are_not_finite_are_refused(limits: dict[str, float], says: str) -> None:
    """inf passed the checks: --max-upload-mb inf gave 500 on every POST (int(inf))."""
    from histodetect.errors import HistodetectError

    with pytest.raises(HistodetectError, match=re.escape(says)):
        ServeLimits(**limits)


def test_a_cancelled_request_does_not_fail_the_others_of_its_batch() -> None:
    """From a review: setting the result of a future its client had cancelled (a shutdown
    timeout) raised InvalidStateError, which was then handed to every request of the batch."""
    release = threading.Event()

    def predict(pixels: np.ndarray) -> np.ndarray:
        release.wait(5)
        return np.arange(len(pixels), dtype=np.float64)

    batcher = MicroBatcher(predict, max_batch=8, max_wait_s=0.5)
    patch = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    blocker = batcher.submit(patch)  # the worker is busy with it while three more queue
    time.sleep(0.1)
    with batcher.arriving():
        queued = [batcher.submit(patch) for _ in range(3)]
    assert queued[0].cancel()  # its client went away before the batch ran
    release.set()
    assert blocker.result(5).shape == (1,)
    assert [f.result(5).shape for f in queued[1:]] == [(1,), (1,)]
    assert batcher.submit(patch).result(5).shape == (1,)
    batcher.close()
