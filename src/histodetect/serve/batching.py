"""Micro-batching: concurrent requests share forward passes, through one worker thread.

Every use of the model goes through `MicroBatcher`'s single worker thread, so requests never
run the model at the same time (Grad-CAM's hooks on a layer would otherwise see other
requests' forward passes). Patch requests waiting in the queue are joined into one call of
`predict_fn`, up to `max_batch` patches, waiting at most `max_wait_s` for company once the
queue is empty, and only while other requests are on their way (`arriving`: reading and
decoding their uploads), so a lone request never waits for company that is not coming. The queue is bounded in patches: a request that does not fit is refused with
`QueueFullError` (the server answers 503 with Retry-After) instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

_T = TypeVar("_T")


class QueueFullError(Exception):
    """The queue holds too many patches to take this request now; retry after a moment."""


@dataclass
class _Patches:
    """Patches of one request and the future of their probabilities."""

    pixels: np.ndarray
    future: Future[np.ndarray] = field(default_factory=Future)


@dataclass
class _Call:
    """A function run alone on the worker thread (Grad-CAM), and the future of its result."""

    fn: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


@dataclass
class BatchStats:
    """Counters since start: forward passes made and patches scored through them."""

    forward_passes: int = 0
    patches: int = 0
    largest_batch: int = 0


class MicroBatcher:
    """A queue of patch requests and exclusive calls, served by one worker thread.

    Args:
        predict_fn: uint8 (n, S, S, 3) pixels -> float (n,) probabilities; called only on the
            worker thread.
        max_batch: most patches joined into one call of `predict_fn` (a larger request runs
            alone).
        max_wait_s: how long the worker waits for more requests once the queue is empty
            before running what it has.
        max_queue: most patches waiting (not yet running) before requests are refused.
        enabled: False runs every request on its own (for benchmarks and comparisons).
    """

    def __init__(
        self,
        predict_fn: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 256,
        max_wait_s: float = 0.005,
        max_queue: int = 1024,
        enabled: bool = True,
    ) -> None:
        self.predict_fn = predict_fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.enabled = enabled
        self.stats = BatchStats()
        self._items: deque[_Patches | _Call] = deque()
        self._queued_patches = 0
        self._arriving = 0  # requests reading or decoding their patches (see `arriving`)
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def queued_patches(self) -> int:
        """Patches waiting in the queue (not counting the batch running now)."""
        return self._queued_patches

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Count a request as on its way while it reads and decodes its patches; `submit` them
        inside the block. The worker waits for company (up to `max_wait_s`) only while some
        request is on its way, so a lone request runs at once."""
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()  # a waiting worker may have no one left to wait for

    def submit(self, pixels: np.ndarray, bounded: bool = True) -> Future[np.ndarray]:
        """Queue patches; the future gives their probabilities, in order.

        Args:
            bounded: refuse when the queue is full (requests); False always queues (slide
                jobs, which send one batch at a time and wait for it).

        Raises:
            QueueFullError: the queue holds `max_queue` patches already (only when bounded).
        """
        item = _Patches(pixels)
        with self._cond:
            self._check_open()
            if bounded and self._queued_patches + len(pixels) > self.max_queue:
                raise QueueFullError(f"{self._queued_patches} patches are waiting already.")
            self._queued_patches += len(pixels)
            self._items.append(item)
            self._cond.notify()
        return item.future

    def call(self, fn: Callable[[], _T]) -> Future[_T]:
        """Run `fn` alone on the worker thread, between batches; the future gives its result.

        Raises:
            QueueFullError: the queue is full (calls count as one patch).
        """
        item = _Call(fn)
        with self._cond:
            self._check_open()
            if self._queued_patches + 1 > self.max_queue:
                raise QueueFullError(f"{self._queued_patches} patches are waiting already.")
            self._queued_patches += 1
            self._items.append(item)
            self._cond.notify()
        return item.future

    async def run(self, fn: Callable[[], _T]) -> _T:
        """`call` for asyncio request handlers: awaits the result of `fn`."""
        return await asyncio.wrap_future(self.call(fn))

    def close(self) -> None:
        """Finish what is queued, then stop the worker thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _check_open(self) -> None:
        """Start the worker on first use; refuse work once closed (caller holds the lock)."""
        if self._closed:
            raise QueueFullError("the server is shutting down.")
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if not self._items:
                    return  # closed and drained
                first = self._items.popleft()
                if isinstance(first, _Call):
                    self._queued_patches -= 1
            if isinstance(first, _Call):
                _settle(first.future, first.fn)
                continue
            batch = [first]
            try:
                self._gather(batch)
                self._run_batch(batch)
            except BaseException as exc:  # the batcher's own failure: these requests get it,
                for item in batch:  # and the worker lives on (a dead one left every later
                    _deliver(item.future, exception=exc)  # request waiting for ever)

    def _gather(self, batch: list[_Patches]) -> None:
        """Add to `batch` (its first request) the patch requests queued behind it, up to
        `max_batch` patches; waits up to `max_wait_s` for more while the queue is empty."""
        n = len(batch[0].pixels)
        deadline = time.monotonic() + self.max_wait_s
        with self._cond:
            try:
                while self.enabled and n < self.max_batch:
                    head = self._items[0] if self._items else None
                    if isinstance(head, _Patches) and n + len(head.pixels) <= self.max_batch:
                        self._items.popleft()
                        batch.append(head)
                        n += len(head.pixels)
                        continue
                    remaining = deadline - time.monotonic()
                    if head is not None or remaining <= 0 or self._closed or not self._arriving:
                        break  # an exclusive call or a large request is next, time is up, or
                        # no request is on its way
                    self._cond.wait(remaining)
            finally:
                self._queued_patches -= n

    def _run_batch(self, batch: list[_Patches]) -> None:
        pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([b.pixels for b in batch])
        try:
            probabilities = self.predict_fn(pixels)
        except BaseException as exc:  # handed to every waiting request, never lost
            for item in batch:
                _deliver(item.future, exception=exc)
            return
        self.stats.forward_passes += 1
        self.stats.patches += len(pixels)
        self.stats.largest_batch = max(self.stats.largest_batch, len(pixels))
        start = 0
        for item in batch:
            _deliver(item.future, probabilities[start : start + len(item.pixels)])
            start += len(item.pixels)


def _settle(future: Future[_T], fn: Callable[[], _T]) -> None:
    """Run `fn` and put its result or exception into `future`."""
    try:
        result = fn()
    except BaseException as exc:
        _deliver(future, exception=exc)
        return
    _deliver(future, result)


def _deliver(
    future: Future[_T], result: _T | None = None, exception: BaseException | None = None
) -> None:
    """Settle `future` unless its request went away (a client gone, a shutdown timeout:
    asyncio cancels the future it awaited). Setting a cancelled future raised
    InvalidStateError, which then failed every other request of the batch."""
    with contextlib.suppress(InvalidStateError):
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)  # type: ignore[arg-type]
