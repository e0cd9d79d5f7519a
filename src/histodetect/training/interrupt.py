"""A training run stopped by a signal: SIGTERM lets the current step finish, then the run ends
with one sentence on how to resume it (the CLI exits 128 + the signal's number)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from histodetect.errors import Interrupted


@contextlib.contextmanager
def stop_gracefully_on_sigterm() -> Iterator[list[int]]:
    """While training, SIGTERM is only recorded, in the list this yields.

    Lightning's own handler, which ``trainer.fit`` installs over this one (and which calls
    this one too), stops the loops at the next step boundary, so no checkpoint is cut off
    half-written, as an exception raised at any instruction could. A SIGTERM that arrives
    before Lightning's handler is in place is still seen through the list.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # signals go to main only
        yield received
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def run_interrupted(run_dir: Path, last_checkpoint: Path, signum: int) -> Interrupted:
    """The exception that ends a run stopped by `signum`, saying how to go on from there."""
    if last_checkpoint.is_file():
        how = (
            "the run stopped before it finished and its last checkpoint is kept: continue it "
            f"with `histodetect train --resume {run_dir}`."
        )
    else:
        how = (
            "the run stopped before its first checkpoint, so there is nothing to resume: run "
            f"the same command again to start {run_dir} afresh."
        )
    return Interrupted(signum, how)
