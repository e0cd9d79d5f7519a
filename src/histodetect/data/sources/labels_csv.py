"""Parsing label and slide columns of CSV files, reporting bad rows instead of crashing."""

from __future__ import annotations

import csv
from pathlib import Path

from histodetect.data.quality import BAD_LABEL, Problem
from histodetect.errors import HistodetectError


def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Read a CSV with a header row; raise one sentence when a required column is missing."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in fields]
            if missing:
                raise HistodetectError(
                    f"{path} has no column {', '.join(missing)} (its header is {','.join(fields)})."
                )
            return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise HistodetectError(f"{path} cannot be read as CSV ({exc}).") from exc


def parse_label(text: str, origin: str, problems: list[Problem]) -> int | None:
    """Return 0 or 1; report anything else as a bad label and return None. "" means unlabelled (-1)."""
    if text == "":
        return -1
    if text in {"0", "1", "0.0", "1.0"}:
        return int(float(text))
    problems.append(Problem(origin, BAD_LABEL, f"label {text!r} is not 0 or 1"))
    return None
