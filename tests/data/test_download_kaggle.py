"""`histodetect download kaggle`: exact guidance without the package or a token; unpack + ingest."""

from __future__ import annotations

import importlib.machinery
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from histodetect.cli.main import main
from histodetect.data.download.kaggle import COMPETITION, CREDENTIALS_HINT, INSTALL_HINT
from imagefiles import make_kaggle


def _fake_kaggle(monkeypatch: pytest.MonkeyPatch, api_class: type) -> None:
    """Install modules `kaggle.api.kaggle_api_extended` whose KaggleApi is `api_class`."""
    for name in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.__path__ = []  # a package, so that the submodule import resolves
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(
        sys.modules["kaggle.api.kaggle_api_extended"], "KaggleApi", api_class, raising=False
    )


class _NoToken:
    def authenticate(self) -> None:  # what the real client raises without kaggle.json
        raise OSError("Could not find kaggle.json. Make sure it's located in ~/.kaggle.")


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


def test_without_the_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "kaggle", None)  # import kaggle -> ImportError
    assert main(["download", "kaggle", "--out", str(tmp_path / "k")]) == 2
    assert _error(capsys) == f"histodetect download: error: {INSTALL_HINT}\n"
    assert "pip install -c constraints.txt -e '.[kaggle]'" in INSTALL_HINT
    assert not (tmp_path / "k").exists()


def test_without_credentials_says_where_the_token_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    _fake_kaggle(monkeypatch, _NoToken)
    assert main(["download", "kaggle", "--out", str(tmp_path / "k")]) == 2
    assert _error(capsys) == f"histodetect download: error: {CREDENTIALS_HINT}\n"
    for where in ("~/.kaggle/", "~/.config/kaggle/", "KAGGLE_USERNAME and KAGGLE_KEY"):
        assert where in CREDENTIALS_HINT
    assert not (tmp_path / "k").exists()


def test_rules_not_accepted_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Refused:
        def authenticate(self) -> None:
            pass

        def competition_download_files(self, competition: str, **kw: object) -> None:
            raise RuntimeError("403 - Forbidden\n(more lines from the client)")

    _fake_kaggle(monkeypatch, Refused)
    assert main(["download", "kaggle", "--out", str(tmp_path / "k")]) == 2
    err = _error(capsys)
    assert f"{COMPETITION}/rules" in err and "403 - Forbidden" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_download_unpacks_the_layout_ingest_reads_then_stores_it(
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_kaggle(tmp_path / "src", rng, n_train=4, n_test=2)
    archive = shutil.make_archive(str(tmp_path / COMPETITION), "zip", tmp_path / "src")
    calls: list[str] = []

    class Works:
        def authenticate(self) -> None:
            pass

        def competition_download_files(self, competition: str, path: str, **kw: object) -> None:
            calls.append(competition)
            shutil.copy(archive, Path(path) / f"{competition}.zip")

    _fake_kaggle(monkeypatch, Works)
    out, store = tmp_path / "kaggle", tmp_path / "store"
    argv = ["download", "kaggle", "--out", str(out), "--store", str(store), "--no-progress"]
    assert main(argv) == 0
    assert calls == [COMPETITION]
    assert (out / "train_labels.csv").is_file() and len(list((out / "train").glob("*.tif"))) == 4
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    )  # no leftovers
    assert "train: 4 patches (2 tumour, 2 normal" in capsys.readouterr().out
    assert main(["download", "kaggle", "--out", str(out), "--no-progress"]) == 0  # already there
    assert calls == [COMPETITION]
