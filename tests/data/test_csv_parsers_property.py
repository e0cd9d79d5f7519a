"""Property-based tests of the CSV readers (csv_list.py, labels_csv.py, the Kaggle labels file):
any text either parses or fails as one HistodetectError, and valid rows round-trip exactly."""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from histodetect.data.quality import BAD_LABEL
from histodetect.data.sources.csv_list import CsvListSource
from histodetect.data.sources.kaggle import KaggleSource
from histodetect.data.sources.labels_csv import parse_label
from histodetect.errors import HistodetectError

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
HEADERS = ("path,label\n", "path,label,split,slide\n", "id,label\n", "")
field = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), max_size=12
)
# Odd cells: any text, names too long for the file system, paths into folders, "0"/"1".
cell = st.one_of(
    st.text(max_size=20),
    st.integers(250, 400).map(lambda n: "a" * n),
    st.sampled_from(["0", "1", "", "..", "/", "a/b.png", "/etc", " 1 ", "1.0", "-1"]),
)
csv_rows = st.tuples(
    st.sampled_from(HEADERS),
    st.lists(st.lists(cell, max_size=5).map(",".join), max_size=5).map("\n".join),
).map("".join)
# Text that looks a little like CSV: commas, quotes, newlines, NULs come often.
csv_text = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from(list(',"\n\r\x00 ab01.-/\\;\t')), max_size=300),
    csv_rows,
)


@pytest.fixture
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@SETTINGS
@given(text=csv_text)
def test_any_csv_list_text_parses_or_is_one_error(folder: Path, text: str) -> None:
    (folder / "list.csv").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        source = CsvListSource(folder / "list.csv")
    except HistodetectError as exc:
        assert "list.csv" in str(exc)
        return
    assert all(e.label in (-1, 0, 1) for e in source.entries)


@SETTINGS
@given(
    data=st.one_of(
        st.binary(max_size=300), csv_text.map(lambda t: t.encode("utf-8", "surrogatepass"))
    )
)
def test_any_kaggle_labels_file_parses_or_is_one_error(folder: Path, data: bytes) -> None:
    (folder / "train_labels.csv").write_bytes(data)
    try:
        source = KaggleSource(folder)
    except HistodetectError as exc:
        assert "train_labels.csv" in str(exc)
        return
    assert source.entries == []  # there are no images, so every row is a problem


@given(text=st.text())
def test_parse_label_accepts_exactly_0_1_and_empty(text: str) -> None:
    problems: list = []
    label = parse_label(text, "origin", problems)
    if text in {"0", "1", "0.0", "1.0"}:
        assert label == int(float(text)) and not problems
    elif text == "":
        assert label == -1 and not problems
    else:
        assert label is None and [p.kind for p in problems] == [BAD_LABEL]


row = st.tuples(
    st.from_regex(r"[a-z0-9_]{1,12}\.png", fullmatch=True),
    st.sampled_from(["0", "1", ""]),
    field,
    field,
)


@SETTINGS
@given(rows=st.lists(row, max_size=8, unique_by=lambda r: r[0]))
def test_valid_rows_round_trip(folder: Path, rows: list[tuple[str, str, str, str]]) -> None:
    for old in folder.iterdir():
        old.unlink()
    with (folder / "list.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "slide"])
        writer.writerows(rows)
    for name, *_ in rows:
        (folder / name).touch()
    source = CsvListSource(folder / "list.csv")
    assert source.problems == []
    got = [(e.path.name, e.label, e.split, e.slide) for e in source.entries]
    assert got == [(n, int(lab) if lab else -1, sp, sl) for n, lab, sp, sl in rows]
