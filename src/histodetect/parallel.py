"""Work spread over processes: how many to use, and an ordered map that stays a few tasks ahead.

Ingest (decoding image files into a store) and predict (decoding image files into batches)
both decode in worker processes; they share this one pool pattern.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from typing import TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")


def default_workers() -> int:
    """Decoding processes to use: one per CPU core available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(fn: Callable[[_T], _R], tasks: Sequence[_T], workers: int) -> Iterator[_R]:
    """map(fn, tasks) in order over a process pool, keeping at most 2 x workers tasks ahead.

    `Executor.map` submits every task at once, so while the consumer is busy (writing a block
    of a store, running a batch through the model) the workers run on and their results pile
    up in memory: a whole dataset's pixels, for a large ingest. Here at most 2 x workers are
    queued; when the consumer stops (an error, Ctrl-C), those not started are cancelled.
    """
    if workers <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        queue = iter(tasks)
        pending: deque[Future[_R]] = deque(pool.submit(fn, t) for t in islice(queue, 2 * workers))
        try:
            while pending:
                result = pending.popleft().result()
                pending.extend(pool.submit(fn, t) for t in islice(queue, 1))
                yield result
        finally:
            for future in pending:  # the consumer stopped early: drop what has not started
                future.cancel()
