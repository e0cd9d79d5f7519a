"""Ingest end to end on generated layouts: reports, strict mode, dropping, duplicates, flags."""

import json
from pathlib import Path

import numpy as np
import pytest

from histodetect.data.ingest import IngestOptions, ingest
from histodetect.data.inspection import render_markdown
from histodetect.data.quality import (
    CROSS_SPLIT_DUPLICATE,
    LABEL_CONFLICT,
    duplicate_groups,
    flag_outliers,
)
from histodetect.data.store import UNNAMED_SPLIT, split_display
from histodetect.errors import HistodetectError
from imagefiles import make_kaggle, make_pcam, random_patch, save_image

QUIET = {"progress": False, "workers": 1}


def _folders_with_duplicates(
    root: Path, rng: np.random.Generator, cross_split: bool = False
) -> None:
    dup = random_patch(rng)
    save_image(root / "train" / "1" / "a.png", dup)
    save_image(root / "train" / "1" / "b.png", dup)
    save_image(root / ("valid" if cross_split else "train") / "1" / "c.png", dup)
    save_image(root / "train" / "0" / "d.png", random_patch(rng))
    save_image(root / "valid" / "0" / "e.png", np.full((96, 96, 3), 250, np.uint8))  # blank glass
    save_image(root / "valid" / "1" / "f.png", random_patch(rng))


def test_duplicates_are_grouped_and_blank_flagged(tmp_path: Path, rng: np.random.Generator) -> None:
    _folders_with_duplicates(tmp_path / "src", rng)
    store, report = ingest(tmp_path / "src", tmp_path / "store", IngestOptions(**QUIET))
    m = store.manifest
    assert len(store) == 6 and store.header["n_duplicate_groups"] == 1
    assert (m.dup_groups >= 0).sum() == 3
    assert m.flags[m.origins == str(tmp_path / "src/valid/0/e.png")][0] == "bright;uniform"
    assert not report.problems
    assert json.loads((store.root / "ingest_report.json").read_text())["n_written"] == 6


def test_drop_duplicates_and_outliers(tmp_path: Path, rng: np.random.Generator) -> None:
    _folders_with_duplicates(tmp_path / "src", rng)
    opts = IngestOptions(drop_duplicates=True, drop_outliers=True, **QUIET)
    store, report = ingest(tmp_path / "src", tmp_path / "store", opts)
    assert len(store) == 3 and report.dropped_duplicates == 2 and report.dropped_outliers == 1
    assert len(set(store.manifest.ids)) == 3


def test_cross_split_duplicates_are_reported(tmp_path: Path, rng: np.random.Generator) -> None:
    _folders_with_duplicates(tmp_path / "src", rng, cross_split=True)
    _, report = ingest(tmp_path / "src", tmp_path / "store", IngestOptions(**QUIET))
    assert [p.kind for p in report.problems] == [CROSS_SPLIT_DUPLICATE]
    assert "train, valid" in report.problems[0].reason


def test_problems_are_summarised_and_strict_leaves_no_store(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    make_kaggle(tmp_path / "k", rng, n_train=4, n_test=1)
    (tmp_path / "k" / "train" / "broken.tif").write_bytes(b"junk")
    with (tmp_path / "k" / "train_labels.csv").open("a") as f:
        f.write("broken,1\n")
    store, report = ingest(tmp_path / "k", tmp_path / "store", IngestOptions(**QUIET))
    assert len(store) == 5
    summary = "\n".join(report.summary_lines())
    assert "broken.tif" in summary and "cannot be read" in summary
    assert "broken.tif" in (store.root / "ingest_report.md").read_text()

    with pytest.raises(HistodetectError, match=r"--strict: 1 problem \(unreadable: 1\)"):
        ingest(tmp_path / "k", tmp_path / "strict", IngestOptions(strict=True, **QUIET))
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith((".strict", "strict"))]
    assert left == ["strict.ingest_report.md"]
    assert "broken.tif" in (tmp_path / "strict.ingest_report.md").read_text()


def test_parallel_ingest_equals_serial(tmp_path: Path, rng: np.random.Generator) -> None:
    for i in range(600):  # more than one task of 256 files
        save_image(tmp_path / "src" / str(i % 2) / f"{i:04d}.png", random_patch(rng))
    serial, _ = ingest(tmp_path / "src", tmp_path / "a", IngestOptions(progress=False, workers=1))
    parallel, _ = ingest(tmp_path / "src", tmp_path / "b", IngestOptions(progress=False, workers=2))
    assert serial.fingerprint == parallel.fingerprint
    assert np.array_equal(serial.pixels, parallel.pixels)


def test_pcam_gz_ingest_keeps_official_splits(tmp_path: Path, rng: np.random.Generator) -> None:
    make_pcam(tmp_path / "p", rng, {"train": 6, "valid": 4, "test": 2}, gz=True)
    store, _ = ingest(tmp_path / "p", tmp_path / "store", IngestOptions(**QUIET))
    assert store.split_names == ["train", "valid", "test"] and store.has_slides
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "scratch left behind"


def test_flag_outliers_and_duplicate_groups_units() -> None:
    block = np.stack([np.zeros((96, 96, 3), np.uint8), np.full((96, 96, 3), 245, np.uint8)])
    assert flag_outliers(block) == ["dark;uniform", "bright;uniform"]
    groups = duplicate_groups(np.array(["b", "a", "b", "c", "a"]))
    assert groups.tolist() == [0, 1, 0, -1, 1]


def test_conflicting_labels_are_kept_unlabelled_and_reported(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    tumour = save_image(tmp_path / "src" / "train" / "1" / "t.png", random_patch(rng))
    (tmp_path / "src" / "train" / "0").mkdir()
    (tmp_path / "src" / "train" / "0" / "t.png").symlink_to(tumour)  # same pixels, label 0
    for label in ("0", "1"):
        save_image(tmp_path / "src" / "train" / label / "other.png", random_patch(rng))
    for drop in (False, True):
        out = tmp_path / f"store-{drop}"
        store, report = ingest(tmp_path / "src", out, IngestOptions(drop_duplicates=drop, **QUIET))
        m = store.manifest
        conflicted = m.flags == LABEL_CONFLICT
        assert conflicted.sum() == (1 if drop else 2)
        assert (m.labels[conflicted] == -1).all() and (m.labels[~conflicted] >= 0).all()
        assert [p.kind for p in report.problems] == [LABEL_CONFLICT]
        assert "kept as unlabelled" in report.problems[0].reason
        assert store.header["counts"]["train"]["unlabelled"] == conflicted.sum()
        assert LABEL_CONFLICT in (out / "ingest_report.md").read_text()
        assert "Label conflicts" in render_markdown(store)


def test_unnamed_split_is_shown_readably(tmp_path: Path, rng: np.random.Generator) -> None:
    dup = random_patch(rng)
    save_image(tmp_path / "flat" / "1" / "a.png", dup)
    save_image(tmp_path / "flat" / "0" / "b.png", random_patch(rng))
    store, _ = ingest(tmp_path / "flat", tmp_path / "s", IngestOptions(**QUIET))
    assert store.split_names == [UNNAMED_SPLIT]
    assert list(store.header["counts"]) == [split_display(UNNAMED_SPLIT)] == ["(none)"]
    assert "| (none) | 2 |" in render_markdown(store)


def test_existing_empty_out_is_used_and_stale_scratch_removed(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    make_pcam(tmp_path / "p", rng, {"valid": 4}, gz=True)
    (tmp_path / "store").mkdir()
    killed = tmp_path / ".store.scratch-0ld0ld00" / "pcam-gunzip-x"  # a killed run's gunzip
    killed.mkdir(parents=True)
    (killed / "camelyonpatch_level_2_split_valid_x.h5").write_bytes(b"\0" * 1000)
    (tmp_path / ".store.tmp-0ld0ld00").mkdir()
    earlier = f"# Failed ingest into {tmp_path / 'store'}\n\n1 problem\n"  # an earlier failure
    (tmp_path / "store.ingest_report.md").write_text(earlier)
    store, _ = ingest(tmp_path / "p", tmp_path / "store", IngestOptions(**QUIET))
    assert len(store) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "store"]


def test_zero_patches_fail_and_name_every_problem(tmp_path: Path, rng: np.random.Generator) -> None:
    (tmp_path / "k" / "train").mkdir(parents=True)
    (tmp_path / "k" / "train" / "bad.tif").write_bytes(b"junk")
    (tmp_path / "k" / "train_labels.csv").write_text("id,label\nbad,1\n")
    with pytest.raises(HistodetectError, match=r"gave no patch.*1 problem \(unreadable: 1\)"):
        ingest(tmp_path / "k", tmp_path / "st", IngestOptions(**QUIET))
    assert not (tmp_path / "st").exists()
    assert "bad.tif" in (tmp_path / "st.ingest_report.md").read_text()


def test_a_users_file_named_like_the_failure_report_is_kept(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """From a review: a successful ingest deleted `<out>.ingest_report.md` whatever it held, and
    a failed one replaced it; only a report ingest wrote is removed or replaced now."""
    mine = tmp_path / "st.ingest_report.md"
    mine.write_text("my precious notes\n")
    (tmp_path / "k" / "train").mkdir(parents=True)
    (tmp_path / "k" / "train" / "bad.tif").write_bytes(b"junk")
    (tmp_path / "k" / "train_labels.csv").write_text("id,label\nbad,1\n")
    with pytest.raises(HistodetectError, match=r"all are listed in .*st\.ingest_report-1\.md"):
        ingest(tmp_path / "k", tmp_path / "st", IngestOptions(**QUIET))
    assert mine.read_text() == "my precious notes\n"
    assert "bad.tif" in (tmp_path / "st.ingest_report-1.md").read_text()
    make_pcam(tmp_path / "p", rng, {"valid": 4}, gz=False)
    store, _ = ingest(tmp_path / "p", tmp_path / "st", IngestOptions(**QUIET))
    assert len(store) == 4 and mine.read_text() == "my precious notes\n"
    assert not (tmp_path / "st.ingest_report-1.md").exists()  # its own: gone with success
