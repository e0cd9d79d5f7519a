"""Ingest: read any supported layout, check it, and write one PatchStore atomically."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from histodetect.data.patch import patch_ids
from histodetect.data.quality import (
    CROSS_SPLIT_DUPLICATE,
    IngestReport,
    Problem,
    cross_split_groups,
    flag_outliers,
)
from histodetect.data.sources import Block, Source, open_source
from histodetect.data.sources.base import default_workers
from histodetect.data.store import Manifest, PatchStore
from histodetect.data.writer import StoreWriter
from histodetect.errors import HistodetectError


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

    Raises:
        HistodetectError: unreadable layout, or any problem under `strict` (no store is left).
    """
    options = options or IngestOptions()
    source_path, out = Path(source_path), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.scratch-") as scratch:
        source = open_source(
            source_path, options.fmt, slides_csv=options.slides_csv, scratch_dir=Path(scratch)
        )
        report = IngestReport(source=str(source_path), format=source.format_name)
        report.problems += source.problems
        _fail_if_strict(report, options)
        with StoreWriter(out, overwrite=options.overwrite) as writer:
            _write_blocks(source, writer, report, options)
            _report_cross_split(writer.manifest(), report)
            _fail_if_strict(report, options)
            report.write(writer.temp_dir)
            store = writer.finish({"source": str(source_path), "source_format": source.format_name})
    return store, report


def _write_blocks(
    source: Source, writer: StoreWriter, report: IngestReport, options: IngestOptions
) -> None:
    workers = options.workers or default_workers()
    with tqdm(
        total=source.count(), unit="patch", desc="ingest", disable=not options.progress
    ) as bar:
        for block in source.iter_blocks(workers):
            report.problems += block.problems
            _add_block(block, writer, report, options)
            bar.update(block.n_inputs)
    report.n_written = len(writer)


def _add_block(
    block: Block, writer: StoreWriter, report: IngestReport, options: IngestOptions
) -> None:
    flags = block.flags if block.flags is not None else flag_outliers(block.pixels)
    ids = block.ids if block.ids is not None else patch_ids(block.pixels)
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
        [block.splits[i] for i in k],
        [block.slides[i] for i in k],
        [block.origins[i] for i in k],
        [flags[i] for i in k],
        ids=[ids[i] for i in k],
    )


def _report_cross_split(m: Manifest, report: IngestReport) -> None:
    """Name duplicate groups that cross splits: training on them would leak into validation."""
    for group in cross_split_groups(m.dup_groups, m.splits):
        members = np.flatnonzero(m.dup_groups == group)
        splits = sorted(set(m.splits[members].tolist()))
        reason = f"the same pixels appear in splits {', '.join(splits)}"
        report.problems.append(Problem(str(m.ids[members[0]]), CROSS_SPLIT_DUPLICATE, reason))


def _fail_if_strict(report: IngestReport, options: IngestOptions) -> None:
    if options.strict and report.problems:
        first = report.problems[0]
        raise HistodetectError(
            f"--strict: {len(report.problems)} problems found (first: {first.origin}: {first.reason}); "
            "no store was written."
        )
