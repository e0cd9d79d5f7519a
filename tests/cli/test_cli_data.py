"""The data commands as a user runs them: exit codes, one-sentence errors, outputs."""

from pathlib import Path

import numpy as np
import pytest

from histodetect.cli.main import main
from imagefiles import make_kaggle, random_patch, save_image


def test_ingest_then_inspect(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    make_kaggle(tmp_path / "k", rng, n_train=6, n_test=2)
    assert main(["ingest", str(tmp_path / "k"), "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Ingested 8 patches" in out and "train: 6 patches (3 tumour, 3 normal" in out
    assert main(["inspect", str(tmp_path / "s")]) == 0
    report = (tmp_path / "s" / "inspect" / "inspect.md").read_text()
    assert "| 1 tumour | 3 | 50.0% |" in report
    for png in ("samples.png", "class_balance.png"):
        assert (tmp_path / "s" / "inspect" / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ingest", "/no/such/dir", "--out", "OUT"], "does not exist"),
        (["inspect", "IN"], "is not a patch store"),
    ],
)
def test_bad_input_is_one_sentence_and_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [a.replace("OUT", str(tmp_path / "o")).replace("IN", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_existing_output_is_not_overwritten(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    make_kaggle(tmp_path / "k", rng, n_train=2, n_test=0)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine")
    assert main(["ingest", str(tmp_path / "k"), "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "s" / "keep.txt").read_text() == "mine"


def test_inspect_replaces_its_own_report_but_not_other_files(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    make_kaggle(tmp_path / "k", rng, n_train=4, n_test=0)
    assert main(["ingest", str(tmp_path / "k"), "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    for _ in range(2):  # a rerun replaces the earlier report
        assert main(["inspect", str(tmp_path / "s")]) == 0
    assert sorted(p.name for p in (tmp_path / "s" / "inspect").iterdir()) == [
        "class_balance.png",
        "inspect.md",
        "samples.png",
    ]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("mine")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "s"), "--out", str(tmp_path / "notes")]) == 2
    assert "mine.txt" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]


def test_flat_class_folders_print_the_unnamed_split(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(4):
        save_image(tmp_path / "flat" / str(i % 2) / f"{i}.png", random_patch(rng))
    argv = ["ingest", str(tmp_path / "flat"), "--out", str(tmp_path / "s"), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "  (none): 4 patches (2 tumour, 2 normal, 0 unlabelled)" in out
    assert "1 problems" not in out and "No problems found." in out
