"""Parsing label and slide columns of CSV files, reporting bad rows instead of crashing."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from histodetect.data.quality import BAD_LABEL, BAD_ROW, Problem
from histodetect.errors import HistodetectError
from histodetect.wording import plural


def read_csv_rows(
    path: Path, required: tuple[str, ...], problems: list[Problem] | None = None
) -> list[dict[str, str]]:
    """The rows of a CSV with a header row, as column -> stripped text; see `read_numbered_rows`."""
    return [row for _, row in read_numbered_rows(path, required, problems)]


def read_numbered_rows(
    path: Path, required: tuple[str, ...], problems: list[Problem] | None = None
) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each row of a CSV with a header row; blank lines are skipped.

    A row with more or fewer fields than the header is never guessed at: with `problems` it is
    reported there (``file:line``) and left out, as a bad label is; without, it raises.

    Raises:
        HistodetectError: unreadable file, a required column missing, a column named twice,
            or (without `problems`) a row with the wrong number of fields.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [c.strip() for c in next(reader, [])]
            _check_header(path, header, required)
            rows: list[tuple[int, dict[str, str]]] = []
            line = reader.line_num + 1  # the line where the next record starts
            for record in reader:
                start, line = line, reader.line_num + 1
                if not record:
                    continue
                if len(record) != len(header):
                    _bad_row(path, start, len(record), len(header), problems)
                    continue
                rows.append(
                    (start, {k: v.strip() for k, v in zip(header, record, strict=True) if k})
                )
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise HistodetectError(f"{path} cannot be read as CSV ({exc}).") from exc


def _check_header(path: Path, header: list[str], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise HistodetectError(
            f"{path} has no column {', '.join(missing)} (its header is {','.join(header)})."
        )
    twice = sorted(c for c, n in Counter(header).items() if c and n > 1)
    if twice:  # which of the two columns is meant cannot be guessed
        raise HistodetectError(
            f"{path} names the column {', '.join(twice)} more than once in its header "
            f"({','.join(header)}); keep one column of each name."
        )


def _bad_row(
    path: Path, line: int, n_fields: int, n_columns: int, problems: list[Problem] | None
) -> None:
    reason = f"has {plural(n_fields, 'field')} but the header has {n_columns} columns; left out"
    if problems is None:
        raise HistodetectError(f"{path} line {line} {reason.removesuffix('; left out')}; fix it.")
    problems.append(Problem(f"{path.name}:{line}", BAD_ROW, reason))


def parse_label(text: str, origin: str, problems: list[Problem]) -> int | None:
    """Return 0 or 1; report anything else as a bad label and return None. "" means unlabelled (-1)."""
    if text == "":
        return -1
    if text in {"0", "1", "0.0", "1.0"}:
        return int(float(text))
    problems.append(Problem(origin, BAD_LABEL, f"label {text!r} is not 0 or 1"))
    return None
