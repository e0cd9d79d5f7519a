"""Run an iterator in a background thread a few items ahead, so that reading the next tiles
overlaps with the model scoring the current ones (decoders and torch release the GIL)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

_T = TypeVar("_T")
_DONE = object()


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def prefetch(items: Iterator[_T], depth: int = 2) -> Generator[_T, None, None]:
    """Yield the items of `items` in order, produced by a worker thread up to `depth` ahead.

    An exception in the worker is raised here, at the item where it happened. Closing the
    generator (or an error or Ctrl-C in the consumer) stops the worker before returning.
    """
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failure(exc))

    worker = threading.Thread(target=work, name="histodetect-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()
