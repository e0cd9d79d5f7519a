"""histodetect.parallel: the ordered process-pool map that ingest and predict decode with."""

from __future__ import annotations

import time
from pathlib import Path

from histodetect.parallel import default_workers, ordered_map


def _square_and_mark(task: tuple[Path, int]) -> int:
    folder, n = task
    (folder / f"started-{n}").touch()
    time.sleep(0.02)
    return n * n


def test_results_come_in_order_whatever_the_workers(tmp_path: Path) -> None:
    tasks = [(tmp_path, n) for n in range(40)]
    for workers in (1, 2, 3):
        assert list(ordered_map(_square_and_mark, tasks, workers)) == [n * n for n in range(40)]
    assert default_workers() >= 1


def test_a_slow_consumer_keeps_only_a_few_results_waiting(tmp_path: Path) -> None:
    # Executor.map submits all 200 at once and its workers run on while the consumer is busy
    # (writing a block to disk, say): their results pile up in memory
    tasks = [(tmp_path, n) for n in range(200)]
    results = ordered_map(_square_and_mark, tasks, 2)
    assert next(results) == 0
    time.sleep(0.6)  # about 60 tasks' time for two workers
    started = len(list(tmp_path.glob("started-*")))
    assert started <= 2 * 2 + 2, f"{started} of 200 tasks ran while the consumer held one result"
    results.close()  # what an error or Ctrl-C in the consumer does
    assert len(list(tmp_path.glob("started-*"))) <= 2 * 2 + 2
