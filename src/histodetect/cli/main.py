"""Entry point of the `histodetect` command: parse, dispatch, turn user errors into one sentence."""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import importlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from types import FrameType, ModuleType
from typing import NoReturn

from histodetect import __version__
from histodetect.errors import HistodetectError, Interrupted

# name -> module; each module defines HELP, add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "synth": "histodetect.cli.synth",
    "download": "histodetect.cli.download",
    "ingest": "histodetect.cli.ingest",
    "inspect": "histodetect.cli.inspect",
    "models": "histodetect.cli.models",
    "train": "histodetect.cli.train",
    "ensemble": "histodetect.cli.ensemble",
    "calibrate": "histodetect.cli.calibrate",
    "evaluate": "histodetect.cli.evaluate",
    "predict": "histodetect.cli.predict",
    "slide": "histodetect.cli.slide",
    "explain": "histodetect.cli.explain",
    "serve": "histodetect.cli.serve",
    "export": "histodetect.cli.export",
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one sentence (exit 2) without the usage block before it,
    as every other bad input is; --help still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message.rstrip('.')} (`{self.prog} --help` lists "
                     "the options).\n")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The full parser with one sub-command per entry of COMMANDS."""
    parser = _Parser(
        prog="histodetect",
        description="Find metastatic cancer in 96x96 H&E lymph-node patches.",
    )
    parser.add_argument("--version", action="version", version=f"histodetect {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in _command_modules().items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def _command_modules() -> dict[str, ModuleType]:
    # Command modules are thin (heavy imports live inside run), so importing all is cheap.
    return {name: importlib.import_module(path) for name, path in COMMANDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (2 for user errors, 130 after Ctrl-C, 143 after
    SIGTERM)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's parser, whose --help lists the options meant
        _subparsers(parser)[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if argv is None:  # this process is the command (not a caller's in-process main([...]))
            from histodetect.hardware import keep_freed_memory

            keep_freed_memory()  # 1.3-1.6x faster training steps on CPUs (its docstring)
        with _sigterm_as_interrupt(args.command not in HANDLE_SIGTERM_THEMSELVES):
            status = int(args._run(args))
        if argv is None:  # the process ends here (not a caller's in-process main([...]))
            # The command is done and has closed what it wrote. Without this, the interpreter's
            # last garbage collections walk the whole heap torch, Lightning and scipy leave
            # (1.3 s after a `train` on 2 idle vCPUs, 13 s under load) before it can exit.
            gc.freeze()
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is handled below
        return status
    except HistodetectError as exc:
        print(f"histodetect {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM raised as `Interrupted`
        signum = int(getattr(exc, "signum", signal.SIGINT))
        by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
        detail = getattr(exc, "message", "") or "nothing half-written was kept."
        print(f"histodetect {args.command}: interrupted{by}; {detail}", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:
        return _stdout_closed()
    except OSError as exc:
        if exc.errno not in USER_OS_ERRORS:
            return _internal_error(args.command, exc)
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"histodetect {args.command}: error: cannot use{where}: {exc.strerror or exc}; "
            "check the path, its permissions and the free disk space.",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:  # the last line of defence: never a bare traceback
        return _internal_error(args.command, exc)


HANDLE_SIGTERM_THEMSELVES = frozenset({"serve"})
"""Commands whose server shuts down gracefully on SIGTERM by itself (uvicorn)."""


@contextlib.contextmanager
def _sigterm_as_interrupt(enabled: bool) -> Iterator[None]:
    """Turn SIGTERM (what a scheduler, `kill` or `timeout` sends) into `Interrupted`, so it runs
    the clean-up Ctrl-C runs (no temporary folder or lock left beside an output) and the
    command exits 143 with a sentence; without this Python dies on the spot."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum)

    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


USER_OS_ERRORS = {
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOENT,
    errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTEMPTY,
}  # fmt: skip
"""OS errors a user causes (permissions, read-only or full disk, a wrong path): one sentence."""


def _stdout_closed() -> int:
    """The reader of our output went away (``histodetect models | head -1``): stop quietly, as
    a shell tool does, with 128 + SIGPIPE; nothing half-written is kept, since files are only
    ever written under a temporary name."""
    try:  # Python would otherwise fail again flushing stdout at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 128 + 13


def _internal_error(command: str, exc: BaseException) -> int:
    """Anything else is a bug in histodetect: say so; the traceback only with HISTODETECT_DEBUG=1."""
    if os.environ.get("HISTODETECT_DEBUG") == "1":
        traceback.print_exc()
    print(
        f"histodetect {command}: internal error (a bug in histodetect, please report it with "
        f"this line; HISTODETECT_DEBUG=1 shows the traceback): {type(exc).__name__}: {exc}",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
