"""Catalogue of `train` options that once fell through to Lightning or torch (an "internal
error" and an empty run folder, a silent change of recipe, a hang) and of training stopped by a
signal: each is one sentence naming the option, exit 2 (128 + the signal for a stopped run),
and no run folder left behind by a refused run.

Add a case here for every defect found in how `train` treats its options or a stop request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from histodetect.cli.main import main
from histodetect.models import tiny_model_kwargs
from imagefiles import make_synthetic_store

TINY_KWARGS = tiny_model_kwargs("histonet")
TINY = ["--model", "histonet", "--model-kwargs", json.dumps(TINY_KWARGS)]
QUICK = ["--epochs", "1", "--batch-size", "32", "--no-progress"]
CLUSTER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "GROUP_RANK", "RANK",
                     "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "LSB_JOBID")  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("options") / "store"
    make_synthetic_store(path, n=160, holdout=("valid",))
    return path


@dataclass(frozen=True)
class Case:
    """`options` added to a tiny training command; the error must hold every `says` fragment."""

    name: str
    options: tuple[str, ...]
    says: tuple[str, ...]


CASES = [
    # B: values Lightning refused with a traceback ("internal error", exit 1, empty run folder).
    Case("devices zero", ("--devices", "0"), ("--devices", "auto or a whole number", "'0'")),
    Case("devices negative", ("--devices", "-1"), ("--devices", "'-1'")),
    Case("devices not a number", ("--devices", "abc"), ("--devices", "'abc'")),
    Case("unknown strategy", ("--strategy", "foo"), ("--strategy 'foo'", "auto", "ddp")),
    Case("tpu accelerator", ("--accelerator", "tpu"), ("--accelerator 'tpu'", "cpu, gpu")),
    Case("dropout above one", ("--model-kwargs", json.dumps({**TINY_KWARGS, "dropout": 1.5})), ("--model-kwargs", "histonet", "dropout")),
    # C: an empty --augment (an unset shell variable) once trained without augmentation.
    Case("augment empty", ("--augment", ""), ("--augment is empty", "--augment none")),
    Case("augment only commas", ("--augment", " , "), ("--augment is empty",)),
    Case("augment none with d4", ("--augment", "none,d4"), ("--augment 'none,d4'", "none alone")),
    # F: several nodes with no cluster environment waited forever at "Initializing distributed".
    Case("two nodes without a cluster", ("--num-nodes", "2"), ("--num-nodes 2", "MASTER_ADDR", "SLURM")),
]  # fmt: skip
if not torch.backends.mps.is_available():
    CASES.append(Case("mps without mps", ("--accelerator", "mps"), ("--accelerator mps",)))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_train_option_is_one_sentence_and_leaves_no_run_folder(
    case: Case,
    store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [*CLUSTER_VARIABLES, *(v for v in os.environ if v.startswith("SLURM_"))]:
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "a" / "b" / "new_run"  # folders the run lock created were left behind
    capsys.readouterr()
    code = main(["train", "--data", str(store), "--out", str(out), *TINY, *QUICK, *case.options])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in case.says:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "a").exists(), "a refused run must leave no run folder or parents"


# ----------------------------------------------------------------------------- D: stopped runs


# The child for Ctrl-C: the train command with a callback that raises SIGINT in the main thread
# at step 3, as a terminal's Ctrl-C reaches a foreground process. This case was flaky for
# sessions (a SIGINT not acted on: the child trained on and exited 0, or ran into the
# timeout) until the cause was found: a shell starts background jobs (`make test &`, nohup)
# with SIGINT ignored, the child inherits that, and Python then installs no KeyboardInterrupt
# handler; run in the foreground or under coreutils `timeout` (which resets it), it passed.
# So the child first restores the handler an interactive terminal's process has.
CTRL_C_CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # not SIG_IGN as a background job has
import lightning as L
from histodetect.cli.main import main
from histodetect.training import fit as fit_module

class CtrlC(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 3:
            signal.raise_signal(signal.SIGINT)

real_callbacks = fit_module._callbacks
fit_module._callbacks = lambda *a: [*real_callbacks(*a), CtrlC()]
sys.exit(main(sys.argv[1:]))
"""


def _train_then_signal(store: Path, out: Path, signum: int) -> subprocess.CompletedProcess[str]:
    """Start a long tiny run in a child process and stop it: SIGTERM is sent from outside once
    its first checkpoint is on disk; SIGINT is Ctrl-C at step 3 (CTRL_C_CHILD). Returns how
    the child ended."""
    train = ["train", "--data", str(store), "--out", str(out), *TINY, "--epochs", "1000",
             "--batch-size", "16", "--checkpoint-every-steps", "1", "--early-stop", "0",
             "--no-progress"]  # fmt: skip
    launcher = ["-m", "histodetect"] if signum != signal.SIGINT else ["-c", CTRL_C_CHILD]
    argv = [sys.executable, *launcher, *train]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if signum != signal.SIGINT:
            deadline = time.monotonic() + 120
            while not (out / "checkpoints" / "last.ckpt").is_file():
                assert child.poll() is None, child.communicate()[1]
                assert time.monotonic() < deadline, "no checkpoint after 120 s"
                time.sleep(0.05)
            child.send_signal(signum)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)


@pytest.mark.parametrize(
    ("signum", "code", "says"),
    [(signal.SIGTERM, 143, "interrupted by SIGTERM"), (signal.SIGINT, 130, "interrupted;")],
    ids=["sigterm", "sigint"],
)
def test_a_stopped_run_exits_non_zero_and_keeps_its_checkpoint_for_resume(
    store: Path, tmp_path: Path, signum: int, code: int, says: str
) -> None:
    """SIGTERM (a scheduler's stop) once ended the run with exit 0 and no model, recorded as a
    success; Ctrl-C ended it with exit 1 and only Lightning's message."""
    from histodetect.training.resume import check_resumable

    out = tmp_path / "run"
    ended = _train_then_signal(store, out, signum)
    last_line = ended.stderr.strip().splitlines()[-1]
    assert ended.returncode == code, ended.stderr
    assert says in last_line and f"histodetect train --resume {out}" in last_line, last_line
    assert "Traceback" not in ended.stderr
    assert not (out / "summary.json").exists() and not (out / "model.pt").exists()
    assert check_resumable(out)[0] == out / "checkpoints" / "last.ckpt"


def test_sigterm_saves_the_step_it_stopped_at_and_the_run_resumes_from_it(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM lost every step since the last periodic checkpoint (up to 200 by default): the
    run now saves last.ckpt at the step it stopped at, and --resume goes on from there."""
    import lightning as L  # noqa: N812

    from histodetect.errors import Interrupted
    from histodetect.training import fit as fit_module
    from histodetect.training.config import resolve_config

    stop_at = 5

    class SigtermAt(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            if trainer.global_step == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)

    real_callbacks = fit_module._callbacks
    monkeypatch.setattr(fit_module, "_callbacks", lambda *a: [*real_callbacks(*a), SigtermAt()])
    out = tmp_path / "run"
    config = resolve_config(str(store), str(out), epochs=2, batch_size=8, early_stop_patience=0,
                            checkpoint_every_steps=1000, model="histonet",
                            model_kwargs=TINY_KWARGS)  # fmt: skip
    with pytest.raises(Interrupted, match="--resume"):
        fit_module.fit(config, progress=False)
    last = out / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == stop_at, "the checkpoint holds the step the run stopped at"
    assert not list(last.parent.glob("*.partial")), "no temporary file is left"

    trained: list[int] = []

    class CountSteps(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            trained.append(trainer.global_step)

    monkeypatch.setattr(fit_module, "_callbacks", lambda *a: [*real_callbacks(*a), CountSteps()])
    result = fit_module.fit(config, resume=True, progress=False)
    steps_per_epoch = json.loads((out / "run_info.json").read_text())["n_train"] // 8
    assert result.epochs_run == 2
    summary = json.loads((out / "summary.json").read_text())
    # It went on from step 5 to the end: no step repeated, none skipped.
    assert summary["global_step"] == 2 * steps_per_epoch
    assert trained == list(range(stop_at + 1, 2 * steps_per_epoch + 1))
