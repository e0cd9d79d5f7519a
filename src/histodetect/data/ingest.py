"""Ingest: read any supported layout, check it, and write one PatchStore atomically."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from histodetect.atomic import output_lock, scratch_dir, write_text_atomic
from histodetect.data.patch import patch_ids
from histodetect.data.quality import (
    CROSS_SPLIT_DUPLICATE,
    LABEL_CONFLICT,
    SPLIT_NAME,
    IngestReport,
    LabelConflicts,
    Problem,
    cross_split_groups,
    flag_outliers,
)
from histodetect.data.sources import Block, Source, open_source
from histodetect.data.store import (
    SPLIT_ALIASES,
    UNNAMED_SPLIT,
    Manifest,
    PatchStore,
    canonical_split,
    split_display,
)
from histodetect.data.writer import StoreWriter, check_store_destination
from histodetect.errors import HistodetectError
from histodetect.parallel import default_workers

MAX_PROBLEMS_IN_ERROR = 3
"""Problems named in the error of a failed ingest; the failure report lists all."""


@dataclass(frozen=True)
class IngestOptions:
    """How to ingest.

    Attributes:
        fmt: layout name (kaggle, pcam, folders, csv); None detects it from the path.
        strict: fail (and leave no store) when any problem is found.
        drop_duplicates: keep only the first copy of each exact duplicate.
        drop_outliers: leave out patches flagged dark, bright or uniform.
        workers: decoding processes; 0 means one per CPU core.
        overwrite: replace an existing store at the destination (only once the new one is complete).
        slides_csv: Kaggle only: an `id,slide` CSV giving each patch's slide.
        progress: show a progress bar.
    """

    fmt: str | None = None
    strict: bool = False
    drop_duplicates: bool = False
    drop_outliers: bool = False
    workers: int = 0
    overwrite: bool = False
    slides_csv: Path | None = None
    progress: bool = True


def ingest(
    source_path: Path | str, out: Path | str, options: IngestOptions | None = None
) -> tuple[PatchStore, IngestReport]:
    """Read `source_path`, write a store at `out`, and return it with the ingest report.

    Every input is read before anything is decided, so a failure names every problem.

    Raises:
        HistodetectError: unusable `out` (checked first), unreadable layout, no patch at all,
            or any problem under `strict`. No store is left; when problems were found, all are
            listed in `<out>.ingest_report.md` beside `out`.
    """
    options = options or IngestOptions()
    source_path, out = Path(source_path), Path(out)
    inputs = [source_path] + ([options.slides_csv] if options.slides_csv else [])
    check_store_destination(out, options.overwrite, inputs)
    with output_lock(out), scratch_dir(out) as scratch:
        source = open_source(
            source_path, options.fmt, slides_csv=options.slides_csv, scratch_dir=scratch
        )
        report = IngestReport(source=str(source_path), format=source.format_name)
        report.problems += source.problems
        with StoreWriter(out, overwrite=options.overwrite, inputs=inputs) as writer:
            conflicts = LabelConflicts()
            _write_blocks(source, writer, report, options, conflicts)
            _mark_conflicts(writer, report, conflicts)
            _report_cross_split(writer.manifest(), report)
            _fail_if_unusable(report, options, out)
            report.write(writer.temp_dir)
            store = writer.finish({"source": str(source_path), "source_format": source.format_name})
        for earlier in out.parent.glob(f"{glob.escape(out.name)}.ingest_report*.md"):
            if _is_failure_report(earlier, out):  # of an earlier failed run; a user's file stays
                earlier.unlink()
    return store, report


FAILURE_TITLE = "Failed ingest into {out}"
"""The first line of a failure report (after "# "): how ingest knows the file is its own."""


def failure_report_path(out: Path) -> Path:
    """Where a failed ingest lists its problems: `<out>.ingest_report.md` beside `out`, or
    `<out>.ingest_report-N.md` when a file of that name is not a report ingest wrote."""
    path = out.with_name(f"{out.name}.ingest_report.md")
    n = 1
    while path.exists() and not _is_failure_report(path, out):
        path = out.with_name(f"{out.name}.ingest_report-{n}.md")
        n += 1
    return path


def _is_failure_report(path: Path, out: Path) -> bool:
    """True when `path` starts as the failure report of an ingest into `out` does (a user's
    notes of that name were deleted by a later successful ingest, or replaced by a failed one)."""
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().rstrip("\n") == "# " + FAILURE_TITLE.format(out=out)
    except (OSError, UnicodeDecodeError):
        return False


def _write_blocks(
    source: Source,
    writer: StoreWriter,
    report: IngestReport,
    options: IngestOptions,
    conflicts: LabelConflicts,
) -> None:
    workers = options.workers or default_workers()
    with tqdm(
        total=source.count(), unit="patch", desc="ingest", disable=not options.progress
    ) as bar:
        given_splits: set[str] = set()
        for block in source.iter_blocks(workers):
            report.problems += block.problems
            given_splits.update(block.splits)
            _add_block(block, writer, report, options, conflicts)
            bar.update(block.n_inputs)
    report.n_written = len(writer)
    report.problems += _split_name_problems(given_splits, report.source)


def _split_name_problems(given: set[str], origin: str) -> list[Problem]:
    """Report split names stored under another spelling (`Val` as `valid`), and names `train`
    does not know, whose patches it may train on."""
    problems = []
    for name in sorted(given - {UNNAMED_SPLIT}):
        stored = canonical_split(name)
        if stored != name:
            reason = f"split {name!r} is stored as {stored!r}"
        elif name not in SPLIT_ALIASES.values():
            reason = (
                f"split {name!r} is not train, valid or test, so `histodetect train` may train "
                "on its patches; name its folder (or CSV value) test or valid if it is "
                "held-out data"
            )
        else:
            continue
        problems.append(Problem(origin, SPLIT_NAME, reason))
    return problems


def _add_block(
    block: Block,
    writer: StoreWriter,
    report: IngestReport,
    options: IngestOptions,
    conflicts: LabelConflicts,
) -> None:
    flags = block.flags if block.flags is not None else flag_outliers(block.pixels)
    ids = block.ids if block.ids is not None else patch_ids(block.pixels)
    conflicts.add(ids, block.labels.tolist(), block.origins)  # before any copy is dropped
    keep = np.ones(len(ids), dtype=bool)
    if options.drop_outliers:
        outlier = np.array([f != "" for f in flags], dtype=bool)
        report.dropped_outliers += int(outlier.sum())
        keep &= ~outlier
    if options.drop_duplicates:
        seen: set[str] = set()
        for i, pid in enumerate(ids):
            if keep[i] and (writer.contains(pid) or pid in seen):
                keep[i] = False
                report.dropped_duplicates += 1
            seen.add(pid)
    k = np.flatnonzero(keep)
    writer.add(
        block.pixels[k],
        block.labels[k],
        [canonical_split(block.splits[i]) for i in k],
        [block.slides[i] for i in k],
        [block.origins[i] for i in k],
        [flags[i] for i in k],
        ids=[ids[i] for i in k],
    )


def _mark_conflicts(writer: StoreWriter, report: IngestReport, conflicts: LabelConflicts) -> None:
    """Keep patches given both labels only as unlabelled, flagged, and report each."""
    if conflicts.ids:
        writer.mark_unlabelled(conflicts.ids, LABEL_CONFLICT)
        report.problems += conflicts.problems()


def _report_cross_split(m: Manifest, report: IngestReport) -> None:
    """Name duplicate groups that cross splits: training on them would leak into validation."""
    for group in cross_split_groups(m.dup_groups, m.splits):
        members = np.flatnonzero(m.dup_groups == group)
        splits = sorted(split_display(s) for s in set(m.splits[members].tolist()))
        reason = f"the same pixels appear in splits {', '.join(splits)}"
        report.problems.append(Problem(str(m.ids[members[0]]), CROSS_SPLIT_DUPLICATE, reason))


def _fail_if_unusable(report: IngestReport, options: IngestOptions, out: Path) -> None:
    """Raise, after listing every problem beside `out`, under --strict or when nothing was read."""
    if not (options.strict and report.problems) and report.n_written > 0:
        return
    listed = ""
    if report.problems:
        path = failure_report_path(out)
        write_text_atomic(path, report.to_markdown(FAILURE_TITLE.format(out=out)))
        first = "; ".join(
            f"{p.origin}: {p.reason}" for p in report.problems[:MAX_PROBLEMS_IN_ERROR]
        )
        listed = f"{report.problem_count_text()}, first: {first}; all are listed in {path}"
    if options.strict and report.problems:
        raise HistodetectError(f"--strict: {listed}; no store was written.")
    why = f" ({listed})" if listed else ""
    raise HistodetectError(
        f"{report.source} gave no patch to store when read as {report.format}{why}; no store "
        "was written: check the path and --format."
    )
