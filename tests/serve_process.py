"""Waiting for a `histodetect serve` child process to print the URL it serves on."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path


def wait_for_url(process: subprocess.Popen[str], log: Path, timeout_s: float = 60) -> str:
    """The `http://127.0.0.1:PORT/` line the server prints, or fail with its log."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"histodetect serve exited: {log.read_text()}")
        found = re.search(r"Serving on (http://127\.0\.0\.1:\d+/)", line)
        if found:
            return found.group(1)
    raise AssertionError("histodetect serve printed no URL")
