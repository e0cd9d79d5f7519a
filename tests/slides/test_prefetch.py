"""prefetch: order kept, the worker's errors raised in the consumer, the worker stopped on close."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from histodetect.slides.prefetch import prefetch


def test_items_come_in_order() -> None:
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))


def test_worker_error_is_raised_at_its_item() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("damaged tile")

    got = []
    with pytest.raises(ValueError, match="damaged tile"):
        for item in prefetch(items()):
            got.append(item)
    assert got == [1, 2]


def test_closing_stops_the_worker() -> None:
    produced = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    before = threading.active_count()
    batches = prefetch(endless(), depth=2)
    assert next(batches) == 0
    batches.close()
    assert threading.active_count() == before
    assert len(produced) <= 5  # the worker ran at most depth + a few items ahead
