"""The CLI's fixed choices are the library's own lists: the CLI repeats some of them so that
parsing arguments imports neither torch nor numpy, and this test keeps the copies equal."""

from __future__ import annotations

import argparse

import pytest

from histodetect.cli.main import build_parser
from histodetect.data.sources import FORMATS
from histodetect.inference.backends import DEVICES
from histodetect.training.config import OPTIMIZERS, PRESETS, SCHEDULES


def _choices(command: str, option: str) -> tuple[str, ...]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if option in a.option_strings)
    assert action.choices is not None, f"{command} {option} has no fixed choices"
    return tuple(action.choices)


@pytest.mark.parametrize(
    ("command", "option", "library"),
    [
        ("ingest", "--format", FORMATS),
        ("train", "--optimizer", OPTIMIZERS),
        ("train", "--schedule", SCHEDULES),
        ("train", "--preset", tuple(PRESETS)),
        ("predict", "--device", DEVICES),
        ("evaluate", "--device", DEVICES),
        ("slide", "--device", DEVICES),
    ],
)
def test_cli_choices_are_the_librarys(command: str, option: str, library: tuple[str, ...]) -> None:
    assert sorted(_choices(command, option)) == sorted(library)
