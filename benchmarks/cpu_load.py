"""What else used the CPU while a benchmark ran: busy cores of other processes, load average.

Linux only (/proc). Benchmarks on a shared machine report this beside every figure, so a
reader can tell a slow machine from a busy one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from histodetect.hardware import busy_cpu_seconds

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _busy_ticks() -> int:
    """CPU ticks spent busy on all cores since boot (user, nice, system, irq, softirq, steal)."""
    busy = busy_cpu_seconds()
    if busy is None:
        raise SystemExit(
            "benchmarks/cpu_load.py reads /proc/stat, which this system lacks (Linux only)."
        )
    return round(busy * TICKS_PER_S)


def _process_ticks(pids: Iterable[int]) -> int:
    """User + system ticks of these processes (all their threads), skipping ended ones."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


@dataclass(frozen=True)
class LoadReport:
    """Other processes' CPU use over an interval.

    Attributes:
        other_cores: mean number of cores busy with processes other than the benchmark's.
        load_1min: the 1-minute load average at the end.
        elapsed_s: length of the interval.
    """

    other_cores: float
    load_1min: float
    elapsed_s: float

    def text(self) -> str:
        """E.g. "other processes 1.6 cores, load 3.2"."""
        return f"other processes {self.other_cores:.1f} cores, load {self.load_1min:.1f}"


class CpuMonitor:
    """Measure other processes' CPU use between `start` and `stop`.

    Args:
        own_pids: returns the benchmark's processes (itself and its workers) when called.
    """

    def __init__(self, own_pids: Callable[[], list[int]] | None = None) -> None:
        self._own_pids = own_pids or (lambda: [os.getpid()])
        self._start = (0.0, 0, 0)

    def start(self) -> None:
        """Begin an interval."""
        self._start = (time.monotonic(), _busy_ticks(), _process_ticks(self._own_pids()))

    def stop(self) -> LoadReport:
        """End the interval and report it."""
        start_s, busy0, own0 = self._start
        elapsed_s = time.monotonic() - start_s
        busy = _busy_ticks() - busy0
        own = _process_ticks(self._own_pids()) - own0
        other = max(0.0, (busy - own) / TICKS_PER_S / max(elapsed_s, 1e-9))
        return LoadReport(other, os.getloadavg()[0], elapsed_s)
