"""The run's per-epoch metrics CSV (Lightning's CSVLogger), kept whole across resumed attempts."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from histodetect.atomic import temp_sibling

LOG_DIR = "logs"
METRICS_FILE = "metrics.csv"
PART_PREFIX = "metrics-part-"


def metrics_path(run_dir: Path) -> Path:
    """Where the CSV logger writes: <run>/logs/metrics.csv."""
    return run_dir / LOG_DIR / METRICS_FILE


def set_aside(run_dir: Path) -> None:
    """Before resuming: move the current metrics.csv aside (the logger would delete it)."""
    current = metrics_path(run_dir)
    if current.is_file():
        n = len(list(current.parent.glob(f"{PART_PREFIX}*.csv")))
        current.replace(current.parent / f"{PART_PREFIX}{n:03d}.csv")


def merge_parts(run_dir: Path) -> None:
    """After a resumed attempt: one metrics.csv, earlier attempts' rows first, no repeated epochs."""
    folder = run_dir / LOG_DIR
    parts = [*sorted(folder.glob(f"{PART_PREFIX}*.csv")), metrics_path(run_dir)]
    tables = [_read(p) for p in parts if p.is_file()]
    rows: list[dict[str, str]] = []
    for table in tables:
        first_epoch = min((_epoch(r) for r in table), default=math.inf)
        rows = [r for r in rows if _epoch(r) < first_epoch] + table
    fields = sorted({k for r in rows for k in r})
    tmp = temp_sibling(metrics_path(run_dir))
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(metrics_path(run_dir))
    finally:
        tmp.unlink(missing_ok=True)
    for part in parts[:-1]:
        part.unlink()


def read_epoch_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch series from metrics.csv: name -> [(epoch, value)], e.g. "val_auc"."""
    path = metrics_path(run_dir)
    series: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return series
    for row in _read(path):
        if _epoch(row) < 0:  # step-only rows (older runs' lr monitor) have no epoch to plot at
            continue
        for key, value in row.items():
            if key in ("epoch", "step") or value in ("", None) or key.endswith("_step"):
                continue
            series.setdefault(key.removesuffix("_epoch"), []).append(
                (int(_epoch(row)), float(value))
            )
    return series


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _epoch(row: dict[str, str]) -> float:
    value = row.get("epoch", "")
    return float(value) if value not in ("", None) else -1.0
