"""The CLI entry point's handling of its own output stream."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_closed_output_pipe_stops_quietly_not_as_an_internal_error() -> None:
    # `histodetect models | head -0`: the reader is gone before anything is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "histodetect", "models"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 128 + 13, done.stderr
    assert "internal error" not in done.stderr
    assert "Traceback" not in done.stderr
    assert "Exception ignored" not in done.stderr
