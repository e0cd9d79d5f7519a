"""An evaluate report folder on disk: the strict metrics.json it holds, and which folders
--overwrite may replace (only a report evaluate wrote)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from histodetect.errors import HistodetectError

METRICS_FILE = "metrics.json"


def metrics_json(metrics: dict[str, Any]) -> str:
    """Strict JSON: a figure with no value (precision when no patch reaches the threshold) is
    null; `json.dumps` wrote a bare NaN, which JSON parsers other than Python's refuse."""

    def finite(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [finite(item) for item in value]
        if isinstance(value, float | np.floating) and not np.isfinite(value):
            return None
        return value

    return json.dumps(finite(metrics), indent=2, default=float, allow_nan=False) + "\n"


def check_report_folder(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a file, or a folder with something in it unless `overwrite` is
    given and it holds an earlier evaluation and nothing else (it would be deleted).

    Raises:
        HistodetectError: naming --out and what to do; nothing has been written.
    """
    from histodetect.data.store import check_not_in_store, foreign_entries
    from histodetect.evaluation.report import REPORT_OUTPUTS

    check_not_in_store(out, "report")

    if out.exists() and not out.is_dir():
        raise HistodetectError(f"--out {out} is a file; give a folder for the report.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise HistodetectError(f"--out {out} already exists; choose another or pass --overwrite.")
    foreign = foreign_entries(out, (METRICS_FILE, *REPORT_OUTPUTS))
    if foreign or not _is_evaluate_metrics(out / METRICS_FILE):
        what = (f"also holds {foreign[0]}" if foreign
                else f"holds no {METRICS_FILE} that evaluate wrote")  # fmt: skip
        raise HistodetectError(
            f"--out {out} {what}, so it is not an evaluate report that --overwrite may replace; "
            "choose another --out (nothing was changed)."
        )


def _is_evaluate_metrics(path: Path) -> bool:
    """True for a metrics.json evaluate wrote: any folder holding a file of that name (another
    tool's results) passed for an evaluate report, and --overwrite deleted it."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(saved, dict) and {"auc", "split_role", "store_fingerprint"} <= set(saved)
