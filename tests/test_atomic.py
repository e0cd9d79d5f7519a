"""The atomic-output helpers: one lock per output, temporaries renamed into place or removed."""

from pathlib import Path

import pytest

from histodetect.atomic import (
    atomic_dir,
    is_temp_name,
    output_lock,
    temp_sibling,
    write_text_atomic,
)
from histodetect.errors import HistodetectError


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("whole")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "whole"
    with pytest.raises(HistodetectError, match="appeared while writing"), atomic_dir(out) as tmp:
        pass
    with atomic_dir(out, replace=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_lock_is_reentrant_and_cleans_what_killed_runs_left(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for tag in ("tmp", "scratch"):
        temp_sibling(out, tag).mkdir()
    old = temp_sibling(out, "old")  # killed between moving the old output aside and the new in
    old.mkdir()
    (old / "kept.txt").write_text("the previous output")
    (tmp_path / ".outside.tmp-12345678").mkdir()  # another output's: not touched
    with output_lock(out), output_lock(out):
        assert (tmp_path / ".out.lock").exists()
    assert (out / "kept.txt").read_text() == "the previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".outside.tmp-12345678", "out"]


def test_write_text_atomic_and_temp_names(tmp_path: Path) -> None:
    write_text_atomic(tmp_path / "a.md", "one")
    write_text_atomic(tmp_path / "a.md", "two")
    assert [p.name for p in tmp_path.iterdir()] == ["a.md"]
    assert (tmp_path / "a.md").read_text() == "two"
    assert is_temp_name(temp_sibling(tmp_path / "x", "scratch").name)
    assert is_temp_name(".x.lock") and not is_temp_name("x.tmp-1") and not is_temp_name(".bashrc")


def test_lock_removes_the_parent_folders_it_made_when_nothing_was_written(tmp_path: Path) -> None:
    with output_lock(tmp_path / "a" / "b" / "out"):
        assert (tmp_path / "a" / "b").is_dir()
    assert list(tmp_path.iterdir()) == []
    with output_lock(tmp_path / "a" / "b" / "out"):
        (tmp_path / "a" / "b" / "out").mkdir()
    assert (tmp_path / "a" / "b" / "out").is_dir()  # written: kept, with its parents
    (tmp_path / "c").mkdir()
    with output_lock(tmp_path / "c" / "d" / "out"):
        (tmp_path / "c" / "note.txt").write_text("the user's")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["note.txt"]  # made d only


@pytest.mark.parametrize("out", [".", ".."])
def test_an_out_without_a_name_is_refused(out: str) -> None:
    with pytest.raises(HistodetectError, match=r"names no new folder"), output_lock(Path(out)):
        pass
