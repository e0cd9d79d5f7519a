"""The one exception type for errors a user can cause (bad path, corrupt file, wrong shape)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


class HistodetectError(Exception):
    """A problem the user can fix; the CLI prints its message as one sentence and exits non-zero."""


def reject_unknown_fields(cls: type, data: Mapping[str, Any], what: str) -> None:
    """Raise, naming the valid keys, when `data` has a key that is not a field of dataclass `cls`.

    Every config schema (ModelSpec, AugmentConfig, TrainConfig) reads dicts this way: never
    filtering unknown settings silently.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise HistodetectError(
            f"unknown {what} {', '.join(unknown)}; valid: {', '.join(sorted(known))}."
        )


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (at most `limit` characters), or its type's name
    when it has none: how a library's error is quoted inside one of our sentences."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class Interrupted(KeyboardInterrupt):
    """A signal (Ctrl-C's SIGINT, a scheduler's SIGTERM) stopped the command; the CLI prints
    `message` (what was kept, how to continue) and exits 128 + `signum`.

    A KeyboardInterrupt, so that every clean-up Ctrl-C runs also runs for SIGTERM, and so that
    no ``except Exception`` (a reader reporting one bad file, say) can swallow it.
    """

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message
