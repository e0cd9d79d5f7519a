"""Data quality: problems found at ingest, blank/outlier flags and exact-duplicate groups."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from histodetect.wording import plural

# Kinds of problem. Every one is named in the ingest summary; --strict fails on any of them.
UNREADABLE = "unreadable"
WRONG_SIZE = "wrong_size"
NOT_RGB = "not_rgb"  # 16-bit, float or other modes that cannot be converted without guessing
CONVERTED = "converted"  # grayscale/RGBA/palette turned into RGB: kept, but reported
MISSING_LABEL = "missing_label"
MISSING_IMAGE = "missing_image"
BAD_LABEL = "bad_label"
BAD_ROW = "bad_row"  # a CSV row with more or fewer fields than its header: left out
NAME_MISMATCH = "name_mismatch"  # a Kaggle file whose name is not the SHA-1 of its pixels
CROSS_SPLIT_DUPLICATE = "cross_split_duplicate"
LABEL_CONFLICT = "label_conflict"  # the same pixels labelled 0 and 1: kept unlabelled, flagged
SPLIT_NAME = "split_name"  # a split spelled otherwise (Val -> valid) or one train does not know
MISSING_SLIDE = "missing_slide"  # a patch the --slides file does not name: kept, no slide id
AMBIGUOUS_ID = "ambiguous_id"  # two Kaggle files with one id (<id>.tif and <id>.tiff): neither used

# Outlier flags: thresholds on the grey level (mean of R, G, B; 0..255) of a whole patch.
DARK_MEAN_MAX = 40.0
BRIGHT_MEAN_MIN = 235.0
UNIFORM_STD_MAX = 12.0


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one input: where (`origin`, a path or id), what kind, and why."""

    origin: str
    kind: str
    reason: str


def flag_outliers(pixels: np.ndarray) -> list[str]:
    """Flag blank or near-uniform patches.

    Args:
        pixels: uint8 (N, H, W, 3).

    Returns:
        One string per patch: ";"-joined flags among "dark" (mean grey < 40), "bright" (mean grey
        > 235, background glass) and "uniform" (grey std < 12: no tissue texture); "" if clean.
    """
    n = len(pixels)
    if n == 0:  # a block whose every file was unreadable
        return []
    # grey = (R + G + B) / 3 per pixel; summing channels in uint16 is many times faster than a
    # float mean over the length-3 channel axis.
    grey_x3 = pixels[..., 0].astype(np.uint16) + pixels[..., 1] + pixels[..., 2]
    mean = pixels.reshape(n, -1).mean(axis=1, dtype=np.float64)
    std = grey_x3.reshape(n, -1).std(axis=1, dtype=np.float32) / 3
    flags: list[str] = []
    for m, s in zip(mean.tolist(), std.tolist(), strict=True):
        names = []
        if m < DARK_MEAN_MAX:
            names.append("dark")
        if m > BRIGHT_MEAN_MIN:
            names.append("bright")
        if s < UNIFORM_STD_MAX:
            names.append("uniform")
        flags.append(";".join(names))
    return flags


def duplicate_groups(ids: np.ndarray) -> np.ndarray:
    """Group exact duplicates: int32 group index per patch, -1 for patches that occur once.

    Groups are numbered 0.. in order of first appearance.
    """
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int32)
    uniq, first, inverse, counts = np.unique(
        ids, return_index=True, return_inverse=True, return_counts=True
    )
    groups = np.full(len(uniq), -1, dtype=np.int32)
    dup = np.flatnonzero(counts > 1)
    groups[dup[np.argsort(first[dup])]] = np.arange(len(dup), dtype=np.int32)
    return groups[inverse]


def cross_split_groups(dup_groups: np.ndarray, splits: np.ndarray) -> list[int]:
    """Duplicate groups whose members sit in more than one split (a train/test leak)."""
    seen: dict[int, set[str]] = {}
    for g, s in zip(dup_groups.tolist(), splits.tolist(), strict=True):
        if g >= 0:
            seen.setdefault(g, set()).add(s)
    return sorted(g for g, names in seen.items() if len(names) > 1)


class LabelConflicts:
    """Finds patches whose pixels are given both labels (0 and 1) anywhere in one ingest."""

    def __init__(self) -> None:
        self._first: dict[str, tuple[int, str]] = {}  # id -> (label, origin) first seen
        self._other: dict[str, str] = {}  # id -> origin of the first opposite label

    def add(self, ids: Sequence[str], labels: Sequence[int], origins: Sequence[str]) -> None:
        """Record patches (every one read, including those later dropped); -1 is ignored."""
        for pid, label, origin in zip(ids, labels, origins, strict=True):
            if label < 0:
                continue
            first = self._first.setdefault(pid, (label, origin))
            if first[0] != label and pid not in self._other:
                self._other[pid] = origin

    @property
    def ids(self) -> set[str]:
        """Ids of the patches given both labels."""
        return set(self._other)

    def problems(self) -> list[Problem]:
        """One `label_conflict` problem per conflicting id, naming a source of each label."""
        out = []
        for pid, other in self._other.items():
            label, origin = self._first[pid]
            where = {label: origin, 1 - label: other}
            reason = (
                f"the same pixels are labelled 0 ({where[0]}) and 1 ({where[1]}); kept as "
                "unlabelled (flag label_conflict), so no training or evaluation uses them"
            )
            out.append(Problem(origin, LABEL_CONFLICT, reason))
        return out


@dataclass
class IngestReport:
    """What ingest found and did; written as ingest_report.json and .md beside the store."""

    source: str
    format: str
    problems: list[Problem] = field(default_factory=list)
    dropped_duplicates: int = 0
    dropped_outliers: int = 0
    n_written: int = 0

    def counts_by_kind(self) -> dict[str, int]:
        """Number of problems of each kind."""
        return dict(Counter(p.kind for p in self.problems))

    def headline_lines(self) -> list[str]:
        """What was written and dropped, and how many problems of each kind."""
        lines = [f"Ingested {plural(self.n_written, 'patch')} from {self.source} ({self.format})."]
        if self.dropped_duplicates:
            n = plural(self.dropped_duplicates, "exact duplicate")
            lines.append(f"Dropped {n} (--drop-duplicates).")
        if self.dropped_outliers:
            n = plural(self.dropped_outliers, "blank/outlier patch")
            lines.append(f"Dropped {n} (--drop-outliers).")
        lines.append(f"{self.problem_count_text()}." if self.problems else "No problems found.")
        return lines

    def problem_count_text(self) -> str:
        """E.g. "3 problems (label_conflict: 2, unreadable: 1)"."""
        by_kind = ", ".join(f"{k}: {n}" for k, n in sorted(self.counts_by_kind().items()))
        return f"{plural(len(self.problems), 'problem')} ({by_kind})"

    def summary_lines(self, max_listed: int = 20) -> list[str]:
        """The headline, then each problem (up to `max_listed`) with its origin and reason."""
        lines = self.headline_lines()
        lines += [f"  {p.origin}: {p.reason}" for p in self.problems[:max_listed]]
        if len(self.problems) > max_listed:
            lines.append(f"  ... and {len(self.problems) - max_listed} more in ingest_report.md")
        return lines

    def to_json(self) -> str:
        """The report as JSON: counts, and every problem with origin, kind and reason."""
        data = {
            "source": self.source,
            "format": self.format,
            "n_written": self.n_written,
            "dropped_duplicates": self.dropped_duplicates,
            "dropped_outliers": self.dropped_outliers,
            "problem_counts": self.counts_by_kind(),
            "problems": [asdict(p) for p in self.problems],
        }
        return json.dumps(data, indent=2)

    def to_markdown(self, title: str = "Ingest report") -> str:
        """The headline and a table of every problem."""
        md = [f"# {title}", "", *self.headline_lines()]
        if self.problems:
            md += ["", "| origin | kind | reason |", "|---|---|---|"]
            md += [f"| {p.origin} | {p.kind} | {p.reason} |" for p in self.problems]
        return "\n".join(md) + "\n"

    def write(self, folder: Path) -> None:
        """Write ingest_report.json and ingest_report.md (every problem listed) into `folder`."""
        from histodetect.atomic import write_text_atomic  # escapes names that are not UTF-8

        write_text_atomic(folder / "ingest_report.json", self.to_json())
        write_text_atomic(folder / "ingest_report.md", self.to_markdown())
