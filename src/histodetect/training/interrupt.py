"""A training run stopped by a signal: SIGTERM lets the current step finish, saves the run's
last checkpoint at that step, then ends the run with one sentence on how to resume it (the CLI
exits 128 + the signal's number)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import lightning as L  # noqa: N812 - Lightning's documented alias
from lightning.pytorch.utilities.exceptions import SIGTERMException

from histodetect.atomic import temp_sibling
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


class CheckpointAtSigterm(L.Callback):
    """Save ``last.ckpt`` when SIGTERM stops the run, so a scheduler's stop loses no steps.

    Lightning stops a run on SIGTERM only at the end of a training step (after the optimizer
    step, the EMA update and the loops' bookkeeping), so the state saved here is a whole step;
    without it up to ``--checkpoint-every-steps`` steps were lost. The file is written under a
    temporary name and renamed over the previous ``last.ckpt``, so a second signal during the
    save leaves the old checkpoint whole. Not saved: a SIGTERM during validation (the loops'
    state is then half-way through it; a SIGTERM in an epoch's last step stops the run in
    the validation that follows), in a run of several processes (DDP), and Ctrl-C, which can
    land anywhere inside a step (resuming from a half-made step could repeat or skip a batch);
    the periodic checkpoint stays the place to resume from.
    """

    def __init__(self, last_checkpoint: Path) -> None:
        self.last_checkpoint = last_checkpoint

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        if trainer.validating:  # mid-validation state is not one Lightning resumes from
            return
        if trainer.world_size > 1:
            # Ranks may stop one step apart (rank 0 at the end of a step, the others at the
            # next step's broadcast), so a collective save could hang; DDP runs keep the
            # periodic checkpoint.
            return
        if trainer.global_step == 0:  # nothing trained yet: nothing worth resuming
            return
        partial = temp_sibling(self.last_checkpoint)
        trainer.save_checkpoint(partial)
        partial.replace(self.last_checkpoint)


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
