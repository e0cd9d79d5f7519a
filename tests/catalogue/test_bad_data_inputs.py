"""Catalogue of bad data inputs (ingest, inspect, synth): each is one sentence naming the file or
option, exit code 2, no traceback, and nothing of the user's lost or half-written left behind.

Add a case here for every defect found in how the data commands treat a bad input.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from histodetect.cli.main import main
from imagefiles import make_kaggle, make_pcam, random_patch, save_image, save_tif

QUIET = ["--no-progress", "--workers", "1"]


@dataclass(frozen=True)
class Case:
    """A bad input: `build` makes it in a folder and returns the command's arguments."""

    name: str
    build: Callable[[Path], list[str]]
    says: tuple[str, ...]  # fragments the error must hold (the file or option it names)
    may_add: tuple[str, ...] = ()  # paths (relative) the failed command may leave: its reports


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content digest ("dir" for folders) of everything under `root`."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"link:{path.readlink()}"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def _store(root: Path, rng: np.random.Generator, name: str = "st") -> Path:
    make_kaggle(root / "src", rng, n_train=6, n_test=0)
    assert main(["ingest", str(root / "src"), "--out", str(root / name), *QUIET]) == 0
    return root / name


def _rng() -> np.random.Generator:
    return np.random.default_rng(7)


# ----------------------------------------------------------------------------- builders


def overwrite_parent_of_input(tmp: Path) -> list[str]:
    make_kaggle(tmp / "project" / "data", _rng(), n_train=4, n_test=0)
    (tmp / "project" / "notes.txt").write_text("mine")
    return ["ingest", "project/data", "--out", "project", "--overwrite"]


def overwrite_the_input(tmp: Path) -> list[str]:
    make_kaggle(tmp / "k", _rng(), n_train=4, n_test=0)
    return ["ingest", "k", "--out", "k", "--overwrite"]


def overwrite_a_folder_of_other_files(tmp: Path) -> list[str]:
    make_kaggle(tmp / "k", _rng(), n_train=4, n_test=0)
    (tmp / "results").mkdir()
    (tmp / "results" / "thesis.docx").write_text("years of work")
    return ["ingest", "k", "--out", "results", "--overwrite"]


def overwrite_a_store_holding_other_files(tmp: Path) -> list[str]:
    _store(tmp, _rng())
    (tmp / "st" / "notes.txt").write_text("mine")
    return ["ingest", "src", "--out", "st", "--overwrite"]


def out_is_a_file(tmp: Path) -> list[str]:
    make_kaggle(tmp / "k", _rng(), n_train=4, n_test=0)
    (tmp / "st").write_text("a file")
    return ["ingest", "k", "--out", "st"]


def existing_out_fails_before_reading(tmp: Path) -> list[str]:
    (tmp / "st").mkdir()
    (tmp / "st" / "keep.txt").write_text("mine")
    return ["ingest", "no-such-source", "--out", "st"]  # the out is refused first


def another_ingest_holds_the_lock(tmp: Path) -> list[str]:
    make_kaggle(tmp / "k", _rng(), n_train=4, n_test=0)
    (tmp / ".st.tmp-0therrun").mkdir()  # the other process's folder in progress
    (tmp / ".st.tmp-0therrun" / "pixels.u8").write_bytes(b"in progress")
    return ["ingest", "k", "--out", "st"]


def _pcam_x(tmp: Path, x: np.ndarray) -> None:
    base = tmp / "p" / "camelyonpatch_level_2_split_valid"
    base.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(f"{base}_x.h5", "w") as f:
        f.create_dataset("x", data=x)
    with h5py.File(f"{base}_y.h5", "w") as f:
        f.create_dataset("y", data=np.zeros((len(x), 1, 1, 1), np.uint8))


def pcam_float_pixels(tmp: Path) -> list[str]:
    _pcam_x(tmp, _rng().random((4, 96, 96, 3), dtype=np.float32))
    return ["ingest", "p", "--out", "st"]


def pcam_int64_pixels(tmp: Path) -> list[str]:
    _pcam_x(tmp, _rng().integers(-255, 255, (4, 96, 96, 3), dtype=np.int64))
    return ["ingest", "p", "--out", "st"]


def pcam_truncated_h5(tmp: Path) -> list[str]:
    make_pcam(tmp / "p", _rng(), {"valid": 40})
    x = tmp / "p" / "camelyonpatch_level_2_split_valid_x.h5"
    x.write_bytes(x.read_bytes()[: x.stat().st_size // 2])
    return ["ingest", "p", "--out", "st"]


def strict_lists_every_problem(tmp: Path) -> list[str]:
    make_kaggle(tmp / "k", _rng(), n_train=4, n_test=0)
    for name in ("broken1", "broken2"):
        (tmp / "k" / "train" / f"{name}.tif").write_bytes(b"junk")
    with (tmp / "k" / "train_labels.csv").open("a") as f:
        f.write("broken1,1\nbroken2,0\nghost,1\n")
    return ["ingest", "k", "--out", "st", "--strict"]


def csv_names_one_file_as_0_and_1(tmp: Path) -> list[str]:
    save_image(tmp / "img" / "a.png", random_patch(_rng()))
    (tmp / "list.csv").write_text("path,label\nimg/a.png,0\nimg/a.png,1\n")
    return ["ingest", "list.csv", "--out", "st", "--strict"]


def symlink_to_tumour_inside_normal(tmp: Path) -> list[str]:
    tumour = save_image(tmp / "f" / "1" / "t.png", random_patch(_rng()))
    save_image(tmp / "f" / "0" / "n.png", random_patch(np.random.default_rng(1)))
    (tmp / "f" / "0" / "t.png").symlink_to(tumour)
    return ["ingest", "f", "--out", "st", "--strict"]


def kaggle_id_labelled_0_and_1(tmp: Path) -> list[str]:
    ids = make_kaggle(tmp / "k", _rng(), n_train=4, n_test=0)
    with (tmp / "k" / "train_labels.csv").open("a") as f:
        f.write(f"{ids[0]},1\n")  # ids[0] is labelled 0 first
    return ["ingest", "k", "--out", "st", "--strict"]


def kaggle_tif_beside_tiff(tmp: Path) -> list[str]:
    ids = make_kaggle(tmp / "k", _rng(), n_train=4, n_test=0)
    shutil.copy(tmp / "k" / "train" / f"{ids[1]}.tif", tmp / "k" / "train" / f"{ids[1]}.tiff")
    return ["ingest", "k", "--out", "st", "--strict"]


def tiff_with_16_bit_rgb(tmp: Path) -> list[str]:
    make_kaggle(tmp / "k", _rng(), n_train=2, n_test=0)
    save_tif(tmp / "k" / "test" / "deep.tif", _rng().integers(0, 65535, (96, 96, 3), np.uint16))
    return ["ingest", "k", "--out", "st", "--strict"]


def tiff_with_float_pixels(tmp: Path) -> list[str]:
    make_kaggle(tmp / "k", _rng(), n_train=2, n_test=0)
    save_tif(tmp / "k" / "test" / "float.tif", _rng().random((96, 96), dtype=np.float32))
    return ["ingest", "k", "--out", "st", "--strict"]


def planar_tiff_of_another_size(tmp: Path) -> list[str]:
    """From a review: a TIFF only tifffile reads (planar RGB) skipped the size check, and a
    200 px one ended ingest with "internal error" (copied into a 96 px slot)."""
    import tifffile

    make_kaggle(tmp / "k", _rng(), n_train=2, n_test=0)
    big = _rng().integers(0, 256, (200, 200, 3), np.uint8)
    (tmp / "k" / "test").mkdir(exist_ok=True)
    tifffile.imwrite(
        tmp / "k" / "test" / "big.tif",
        big,
        planarconfig="separate",  # Pillow cannot open it
    )
    return ["ingest", "k", "--out", "st", "--strict"]


def kaggle_names_swapped(tmp: Path) -> list[str]:
    """From a review: two train tifs with their names swapped (each named with the other's
    SHA-1) each took the other's label, and even --strict said "No problems found"."""
    ids = make_kaggle(tmp / "k", _rng(), n_train=4, n_test=0)
    first, second = (tmp / "k" / "train" / f"{pid}.tif" for pid in ids[:2])
    first.rename(tmp / "k" / "swap.tif")
    second.rename(first)
    (tmp / "k" / "swap.tif").rename(second)
    return ["ingest", "k", "--out", "st", "--strict"]


def inspect_into_another_store(tmp: Path) -> list[str]:
    """From a review: inspect --out could write into another store, which `ingest --overwrite`
    then refused to replace ("holds report, which histodetect did not write")."""
    _store(tmp, _rng(), "st")
    _store(tmp, np.random.default_rng(5), "other")
    return ["inspect", "st", "--out", "other/report"]


def _pcam_group(name: str) -> Callable[[Path], list[str]]:
    """From a review: an `x` or `y` that is an HDF5 group, not a dataset: "internal error"."""

    def build(tmp: Path) -> list[str]:
        make_pcam(tmp / "p", _rng(), {"valid": 4})
        path = tmp / "p" / f"camelyonpatch_level_2_split_valid_{name}.h5"
        path.unlink()
        with h5py.File(path, "w") as f:
            f.create_group(name)
        return ["ingest", "p", "--out", "st"]

    return build


def header_only_csv(tmp: Path) -> list[str]:
    (tmp / "list.csv").write_text("path,label\n")
    return ["ingest", "list.csv", "--out", "st"]


def csv_header_names_label_twice(tmp: Path) -> list[str]:
    save_image(tmp / "img" / "a.png", random_patch(_rng()))
    (tmp / "list.csv").write_text("path,label,label\nimg/a.png,1,0\n")  # which label is meant?
    return ["ingest", "list.csv", "--out", "st"]


def kaggle_header_names_label_twice(tmp: Path) -> list[str]:
    ids = make_kaggle(tmp / "k", _rng(), n_train=4, n_test=0)
    rows = "".join(f"{pid},0,1\n" for pid in ids)
    (tmp / "k" / "train_labels.csv").write_text(f"id,label,label\n{rows}")
    return ["ingest", "k", "--out", "st"]


def _csv_with_row(row: str) -> Callable[[Path], list[str]]:
    """A CSV of two good rows and `row` (line 3), read with --strict."""

    def build(tmp: Path) -> list[str]:
        save_image(tmp / "img" / "a.png", random_patch(_rng()))
        save_image(tmp / "img" / "b.png", random_patch(np.random.default_rng(1)))
        (tmp / "list.csv").write_text(f"path,label\nimg/a.png,0\n{row}\nimg/b.png,1\n")
        return ["ingest", "list.csv", "--out", "st", "--strict"]

    return build


def wrong_format_gives_no_patch(tmp: Path) -> list[str]:
    save_image(tmp / "f" / "0" / "a.png", random_patch(_rng()))
    return ["ingest", "f", "--out", "st", "--format", "kaggle"]


def every_file_unreadable(tmp: Path) -> list[str]:
    for name in ("a", "b"):
        (tmp / "f" / "1").mkdir(parents=True, exist_ok=True)
        (tmp / "f" / "1" / f"{name}.png").write_bytes(b"not a png")
    return ["ingest", "f", "--out", "st"]


def _manifest_edit(edit: Callable[[list[str]], list[str]]) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        store = _store(tmp, _rng())
        lines = (store / "manifest.csv").read_text().splitlines()
        (store / "manifest.csv").write_text("\n".join(edit(lines)) + "\n")
        return ["inspect", "st"]

    return build


def _set_label(value: str | None) -> Callable[[list[str]], list[str]]:
    """Edit the first row's label to `value` (None: flip 0 and 1)."""

    def edit(lines: list[str]) -> list[str]:
        fields = lines[1].split(",")
        fields[1] = value if value is not None else str(1 - int(fields[1]))
        return [lines[0], ",".join(fields), *lines[2:]]

    return edit


def _manifest_not_utf8(tmp: Path) -> list[str]:
    """A Latin-1 byte in manifest.csv (an edit in another encoding): it was an internal error."""
    store = _store(tmp, _rng())
    data = (store / "manifest.csv").read_bytes()
    (store / "manifest.csv").write_bytes(data.replace(b"\n", b"\xe9\n", 1))
    return ["inspect", "st"]


def _header_edit(**changes: object) -> Callable[[Path], list[str]]:
    """header.json with `changes` (values the store's readers choked on: inspect crashed)."""

    def build(tmp: Path) -> list[str]:
        store = _store(tmp, _rng())
        header = json.loads((store / "header.json").read_text())
        header.update(changes)
        (store / "header.json").write_text(json.dumps(header))
        return ["inspect", "st"]

    return build


REPORT = ("st.ingest_report.md",)  # a failed ingest lists its problems there


def pixels_changed_after_ingest(tmp: Path) -> list[str]:
    """One byte of the third patch changed inside pixels.u8 (same length): every command read
    the damaged pixels without a word; inspect now checks them against their SHA-1 ids."""
    store = _store(tmp, _rng())
    data = bytearray((store / "pixels.u8").read_bytes())
    data[2 * 96 * 96 * 3 + 100] ^= 0xFF
    (store / "pixels.u8").write_bytes(bytes(data))
    return ["inspect", "st"]


def training_on_changed_pixels(tmp: Path) -> list[str]:
    """The same damage, given to train: it trained on the changed pixels without a word."""
    pixels_changed_after_ingest(tmp)
    return [
        "train",
        "--data",
        "st",
        "--out",
        "run",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--no-progress",
    ]


CASES = [
    Case("training_on_changed_pixels", training_on_changed_pixels, ("st/pixels.u8", "the pixels of 1 patch no longer match", "ingest the source again")),
    Case("overwrite_parent_of_input", overwrite_parent_of_input, ("--out project", "project/data")),
    Case("pixels_changed_after_ingest", pixels_changed_after_ingest, ("st/pixels.u8", "the pixels of 1 patch no longer match the ids ingest gave them", "row 2 counting from 0", "ingest the source again")),
    Case("overwrite_the_input", overwrite_the_input, ("--out k", "holds the input")),
    Case("overwrite_foreign_folder", overwrite_a_folder_of_other_files, ("results", "--overwrite")),
    Case("overwrite_store_with_extras", overwrite_a_store_holding_other_files, ("notes.txt",)),
    Case("out_is_a_file", out_is_a_file, ("--out st", "is a file")),
    Case("existing_out_checked_first", existing_out_fails_before_reading, ("st", "already exists")),
    Case("concurrent_ingest", another_ingest_holds_the_lock, ("another histodetect", "st")),
    Case("pcam_float32_x", pcam_float_pixels, ("float32", "_valid_x.h5")),
    Case("pcam_int64_x", pcam_int64_pixels, ("int64", "_valid_x.h5")),
    Case("pcam_truncated_h5", pcam_truncated_h5, ("_valid_x.h5", "truncated")),
    Case(
        "strict_lists_every_problem",
        strict_lists_every_problem,
        ("--strict: 3 problems (missing_image: 1, unreadable: 2)", "broken1.tif", "st.ingest_report.md"),
        REPORT,
    ),
    Case("csv_0_and_1", csv_names_one_file_as_0_and_1, ("label_conflict", "a.png"), REPORT),
    Case("symlink_into_0", symlink_to_tumour_inside_normal, ("label_conflict", "t.png"), REPORT),
    Case("kaggle_id_0_and_1", kaggle_id_labelled_0_and_1, ("label_conflict", "train_labels.csv"), REPORT),
    Case("kaggle_tif_and_tiff", kaggle_tif_beside_tiff, ("ambiguous_id", ".tiff"), REPORT),
    Case("tiff_16_bit_rgb", tiff_with_16_bit_rgb, ("deep.tif", "16-bit integer pixels in 3 channels"), REPORT),
    Case("tiff_float", tiff_with_float_pixels, ("float.tif", "floating-point"), REPORT),
    Case("tiff_planar_200px", planar_tiff_of_another_size, ("wrong_size", "big.tif", "200x200"), REPORT),
    Case("kaggle_names_swapped", kaggle_names_swapped, ("--strict: 2 problems (name_mismatch: 2)", "st.ingest_report.md"), REPORT),
    Case("inspect_into_another_store", inspect_into_another_store, ("--out other/report", "lies inside the patch store", "other,", "elsewhere")),
    Case("pcam_x_a_group", _pcam_group("x"), ("_valid_x.h5", "'x' is a group")),
    Case("pcam_y_a_group", _pcam_group("y"), ("_valid_y.h5", "'y' is a group")),
    Case("header_only_csv", header_only_csv, ("list.csv", "gave no patch")),
    Case("csv_label_column_twice", csv_header_names_label_twice, ("list.csv", "column label more than once")),
    Case("kaggle_label_column_twice", kaggle_header_names_label_twice, ("train_labels.csv", "column label more than once")),
    Case("csv_row_too_short", _csv_with_row("img/b.png"), ("bad_row", "list.csv:3", "1 field but the header has 2"), REPORT),
    Case("csv_row_too_long", _csv_with_row("img/b.png,1,0"), ("bad_row", "list.csv:3", "3 fields but the header has 2"), REPORT),
    Case("wrong_format", wrong_format_gives_no_patch, ("gave no patch", "--format")),
    Case("every_file_unreadable", every_file_unreadable, ("gave no patch", "2 problems (unreadable: 2)", "f/1/a.png"), REPORT),
    Case("manifest_label_7", _manifest_edit(_set_label("7")), ("st/manifest.csv", "label '7'")),
    Case("manifest_empty_label", _manifest_edit(_set_label("")), ("st/manifest.csv", "label ''")),
    Case("manifest_row_removed", _manifest_edit(lambda lines: lines[:-1]), ("st/manifest.csv", "5 rows")),
    Case("manifest_label_flipped", _manifest_edit(_set_label(None)), ("st/manifest.csv", "header.json")),
    Case("manifest_not_utf8", _manifest_not_utf8, ("st/manifest.csv", "not UTF-8")),
    Case("header_counts_a_list", _header_edit(counts=[1, 2]), ("st/header.json", "counts")),
    Case("header_counts_without_a_class", _header_edit(counts={"train": {"total": 6}}), ("st/header.json", "counts")),
    Case("header_count_a_string", _header_edit(counts={"train": {"total": "6", "tumour": 3, "normal": 3, "unlabelled": 0}}), ("st/header.json", "counts")),
    Case("header_tumour_fraction_a_string", _header_edit(tumour_fraction="half"), ("st/header.json", "tumour_fraction")),
    Case("header_format_version_a_string", _header_edit(format_version="1"), ("st/header.json", "format_version '1'")),
]  # fmt: skip


@contextlib.contextmanager
def _held_lock(path: Path) -> Iterator[None]:
    """Hold `path` locked from a separate open file, as a second process would."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        yield
    finally:
        os.close(fd)


def _run(argv: list[str], cwd: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    old = Path.cwd()
    os.chdir(cwd)
    try:
        code = main([*argv, *QUIET] if argv[0] == "ingest" else argv)
    finally:
        os.chdir(old)
    return code, capsys.readouterr().err


def _assert_one_sentence(code: int, err: str, says: tuple[str, ...]) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in says:
        assert fragment in err, (fragment, err)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_data_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: Case) -> None:
    argv = case.build(tmp_path)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    with contextlib.ExitStack() as stack:
        if case.name == "concurrent_ingest":
            stack.enter_context(_held_lock(tmp_path / ".st.lock"))
            before = _snapshot(tmp_path)
        code, err = _run(argv, tmp_path, capsys)
    _assert_one_sentence(code, err, case.says)
    after = _snapshot(tmp_path)
    lost = {k: v for k, v in before.items() if after.get(k) != v}
    added = sorted(set(after) - set(before) - set(case.may_add))
    assert not lost, f"changed or lost: {lost}"
    assert not added, f"left behind: {added}"


def test_a_file_name_that_is_not_utf8_is_ingested_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From a review: a PNG named with a Latin-1 byte (caf\\xe9.png) was decoded with the rest,
    then ingest ended with "internal error" (UnicodeEncodeError) writing the manifest, and
    every decoded patch was lost. Its name is now kept, escaped, and the store opens."""
    from histodetect.data.store import open_store

    folder = tmp_path / "f"
    save_image(folder / "1" / "ok.png", random_patch(_rng()))
    save_image(folder / "1" / os.fsdecode(b"caf\xe9.png"), random_patch(np.random.default_rng(1)))
    save_image(folder / "0" / "n.png", random_patch(np.random.default_rng(2)))
    code, err = _run(["ingest", "f", "--out", "st"], tmp_path, capsys)
    assert code == 0, err
    store = open_store(tmp_path / "st")
    assert len(store) == 3 and sorted(store.manifest.labels.tolist()) == [0, 1, 1]
    assert any("caf\\udce9.png" in origin for origin in store.manifest.origins)
    assert main(["inspect", str(tmp_path / "st")]) == 0  # the store is not called damaged


def test_csv_row_with_wrong_field_count_is_reported_not_guessed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --strict, a short row (once read as "unlabelled") and a long row (once read with
    its extra field dropped) are left out and reported, like a bad label."""
    from histodetect.data.store import open_store

    for name in ("a", "b", "c"):
        save_image(tmp_path / "img" / f"{name}.png", random_patch(np.random.default_rng(ord(name))))
    (tmp_path / "list.csv").write_text("path,label\nimg/a.png,0\nimg/b.png\nimg/c.png,1,0\n")
    code, _ = _run(["ingest", "list.csv", "--out", "st"], tmp_path, capsys)
    assert code == 0
    store = open_store(tmp_path / "st")
    assert len(store) == 1 and list(store.manifest.labels) == [0]
    report = (tmp_path / "st" / "ingest_report.md").read_text()
    assert "list.csv:3" in report and "list.csv:4" in report and "bad_row" in report


def test_sigterm_during_ingest_cleans_up_like_ctrl_c(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (a scheduler's stop, `timeout`, `kill`) once killed ingest on the spot, leaving
    .st.tmp-*, .st.scratch-* and .st.lock beside the output; Ctrl-C cleaned up."""
    from histodetect.data.writer import StoreWriter

    make_kaggle(tmp_path / "k", _rng(), n_train=6, n_test=0)
    real_add = StoreWriter.add

    def add_then_sigterm(self: StoreWriter, *args: object, **kwargs: object) -> None:
        real_add(self, *args, **kwargs)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGTERM)  # mid-ingest, with the temporary folder written

    monkeypatch.setattr(StoreWriter, "add", add_then_sigterm)
    ignored: list[int] = []
    # Without the fix SIGTERM would end pytest itself; with it, ingest's own handler replaces
    # this one while it runs.
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: ignored.append(signum))
    try:
        before = _snapshot(tmp_path)
        code, err = _run(["ingest", "k", "--out", "st"], tmp_path, capsys)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not ignored, "ingest did not handle SIGTERM"
    assert code == 143, err
    said = "histodetect ingest: interrupted by SIGTERM; nothing half-written was kept."
    assert err.strip() == said
    assert _snapshot(tmp_path) == before, "a stopped ingest must leave nothing beside its output"


# ----------------------------------------------------------------------------- read-only --out


@pytest.fixture
def make_read_only() -> Iterator[Callable[[Path], None]]:
    """Make folders unwritable (chmod for a user, the immutable attribute for root)."""
    undo: list[Callable[[], None]] = []

    def lock(folder: Path) -> None:
        if os.geteuid() != 0:
            folder.chmod(0o555)
            undo.append(lambda: folder.chmod(0o755))
            return
        chattr = shutil.which("chattr")
        done = chattr and subprocess.run([chattr, "+i", str(folder)], capture_output=True)
        if not done or done.returncode != 0:
            pytest.skip("cannot make a folder read-only here (root without chattr +i)")
        undo.append(lambda: subprocess.run([str(chattr), "-i", str(folder)], check=True))

    yield lock
    for step in reversed(undo):
        step()


READ_ONLY = {
    "ingest": (["ingest", "src", "--out", "ro/st"], "ro", "cannot use ro/st"),
    "synth": (["synth", "--out", "ro/k", "-n", "4", "--no-progress"], "ro", "cannot use ro/k"),
    "inspect": (["inspect", "st"], "st", "cannot use st/inspect"),
}


@pytest.mark.parametrize("command", sorted(READ_ONLY))
def test_read_only_out_is_one_sentence(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_read_only: Callable[[Path], None],
    command: str,
) -> None:
    argv, read_only, says = READ_ONLY[command]
    _store(tmp_path, _rng())  # src/ (a Kaggle layout) and st/ (its store)
    (tmp_path / "ro").mkdir()
    make_read_only(tmp_path / read_only)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    code, err = _run(argv, tmp_path, capsys)
    _assert_one_sentence(code, err, (says,))
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- predict's reader


def test_broken_symlink_in_a_predicted_folder_is_an_error_row(tmp_path: Path) -> None:
    from histodetect.inference.inputs import collect_inputs, iter_batches

    save_image(tmp_path / "in" / "a.png", random_patch(_rng()))
    (tmp_path / "in" / "b.png").symlink_to(tmp_path / "gone.png")
    batches = list(iter_batches(collect_inputs([tmp_path / "in"]), 96))
    rows = dict(zip(batches[0].paths, batches[0].errors, strict=True))
    assert rows[str(tmp_path / "in" / "a.png")] is None
    assert "broken symbolic link" in str(rows[str(tmp_path / "in" / "b.png")])


def test_truncated_h5_given_to_predict_is_one_sentence(tmp_path: Path) -> None:
    from histodetect.errors import HistodetectError
    from histodetect.inference.inputs import collect_inputs

    make_pcam(tmp_path, _rng(), {"valid": 40})
    x = tmp_path / "camelyonpatch_level_2_split_valid_x.h5"
    x.write_bytes(x.read_bytes()[:5000])
    with pytest.raises(HistodetectError, match=f"{x} cannot be read as an HDF5 file.*truncated"):
        collect_inputs([x])


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_inputs_that_hold_no_patch_are_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """An empty PCam _x.h5 gave exit 0 and "0 predicted, 0 failed" (from a bad-input hunt)."""
    x = tmp_path / "camelyonpatch_level_2_split_test_x.h5"
    with h5py.File(x, "w") as f:
        f["x"] = np.zeros((0, 96, 96, 3), np.uint8)
    out = tmp_path / ("p.csv" if command == "predict" else "ex")
    assert main([command, str(x), "--out", str(out), "--device", "cpu", *QUIET]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"histodetect {command}: error: {x} holds no patches; give inputs with at least one patch."
    ]
    assert not out.exists()


def test_a_folder_that_cannot_be_listed_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rglob` skipped an unreadable subfolder in silence (its patches were missing from the
    CSV, exit 0), and an unreadable folder was reported as its header.json. The folder given
    is refused; one inside it is warned of, by name (a data disk's lost+found is root-only),
    and a symbolic link is not followed, as rglob does not. CI runs as root, whom permissions
    do not stop, so the test denies access through os.access."""
    for name in ("a.png", "sub/b.png", "other/c.png"):
        save_image(tmp_path / "in" / name, random_patch(_rng()))
    (tmp_path / "in" / "link").symlink_to(tmp_path / "in" / "other")
    locked: set[Path] = {tmp_path / "in" / "sub", tmp_path / "in" / "link"}
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: Path(p) not in locked and real_access(p, mode)
    )
    out = tmp_path / "p.csv"
    argv = ["predict", str(tmp_path / "in"), "--out", str(out), "--device", "cpu", *QUIET]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"warning: cannot read the folder {tmp_path / 'in' / 'sub'} (permission denied); any "
        "patches in it are left out."
    ]
    locked.add(tmp_path / "in")
    assert main([*argv, "--overwrite"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"histodetect predict: error: cannot read the folder {tmp_path / 'in'} (permission "
        "denied); fix its permissions, or leave it out of the inputs."
    ]


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_inputs_none_of_which_can_be_read_exit_2_with_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """predict and explain exited 1, an internal error's code, when every input was unreadable:
    now 2 and one sentence naming the CSV whose error column says why (still written)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_text("not an image")
    (tmp_path / "in" / "b.tif").write_bytes(b"")
    out = tmp_path / ("p.csv" if command == "predict" else "ex")
    argv = [command, str(tmp_path / "in"), "--out", str(out), "--device", "cpu", *QUIET]
    assert main(argv) == 2
    err = capsys.readouterr().err
    table = out if command == "predict" else out / "explanations.csv"
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"histodetect {command}: error: none of the 2 inputs could be {command}ed"
    )
    assert str(table) in last, err
    assert "Traceback" not in err
    assert all(row["error"] for row in csv.DictReader(table.open(encoding="utf-8")))
    save_image(tmp_path / "in" / "c.png", random_patch(_rng()))  # one readable patch: 0
    assert main([*argv, "--overwrite"]) == 0


def test_split_folders_spelled_otherwise_are_stored_under_the_names_train_knows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Folders `Train/` and `Val/` (or `validation/`) became splits `Train` and `Val`: `train`
    found no `valid` split and made its own from every patch, so the user's validation patches
    were trained on. Split names are now stored canonically, and names `train` does not know
    are reported."""
    from histodetect.data.splits import choose_split
    from histodetect.data.store import open_store

    rng = _rng()
    src = tmp_path / "src"
    for split, n in (("Train", 6), ("Val", 4), ("holdout", 2)):
        for label in (0, 1):
            for i in range(n // 2):
                save_image(src / split / str(label) / f"{split}{label}{i}.png", random_patch(rng))
    assert main(["ingest", str(src), "--out", str(tmp_path / "st"), *QUIET]) == 0
    said = capsys.readouterr()
    store = open_store(tmp_path / "st")
    splits = store.manifest.splits.tolist()
    assert sorted(set(splits)) == ["holdout", "train", "valid"]
    assert splits.count("valid") == 4 and splits.count("train") == 6
    out = said.out + said.err
    assert "split 'Train' is stored as 'train'" in out and "split 'Val' is stored as 'valid'" in out
    assert "split 'holdout' is not train, valid or test" in out
    split = choose_split(store)
    assert split.method == "official" and len(split.valid) == 4 and len(split.train) == 6
    # --strict treats the renaming as the problem it is reported as
    argv = ["ingest", str(src), "--out", str(tmp_path / "st2"), "--strict", *QUIET]
    assert main(argv) == 2 and not (tmp_path / "st2").exists()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["predict", "x.png", "--out", "p.csv", "--workers", "-1"], "argument --workers: -1"),
        (["slide", "s.tif", "--out", "o", "--mpp", "abc"], "argument --mpp"),
        (["export", "--format", "tflite", "--out", "a.onnx"], "argument --format"),
        (["nope"], "invalid choice: 'nope'"),
        (["predict", "x.png", "--out", "p.csv", "--bogus"], "`histodetect predict --help`"),
    ],
)
def test_an_option_argparse_refuses_is_one_sentence(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    """argparse printed its usage block (3-6 lines) before the sentence (from a bad-input hunt)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and says in err and "usage:" not in err, err
    assert err.startswith("histodetect") and err.rstrip().endswith("--help` lists the options).")
