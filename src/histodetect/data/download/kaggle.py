"""The Kaggle competition files, through the official `kaggle` package, unpacked for ingest."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from histodetect.errors import HistodetectError

COMPETITION = "histopathologic-cancer-detection"
INSTALL_HINT = (
    "the kaggle package is not installed: run pip install -c constraints.txt -e '.[kaggle]' "
    "(or pip install kaggle), then rerun."
)
# Where the token goes, per the kaggle package's own documentation (Kaggle/kaggle-api README
# and docs/README.md): kaggle.json in ~/.kaggle/ or, on Linux, $XDG_CONFIG_HOME/kaggle/
# (~/.config/kaggle/), or $KAGGLE_CONFIG_DIR; or KAGGLE_USERNAME and KAGGLE_KEY; the newer
# releases also read KAGGLE_API_TOKEN, ~/.kaggle/access_token and `kaggle auth login`.
CREDENTIALS_HINT = (
    "no usable Kaggle credentials: create an API token at https://www.kaggle.com/settings "
    "(API section) and save kaggle.json in ~/.kaggle/ (or ~/.config/kaggle/, or "
    "$KAGGLE_CONFIG_DIR) or export KAGGLE_USERNAME and KAGGLE_KEY (newer kaggle releases "
    "also take KAGGLE_API_TOKEN or `kaggle auth login`), then rerun."
)


def download_kaggle(out: Path | str, competition: str = COMPETITION, progress: bool = True) -> Path:
    """Download the competition's files and unpack them into `out` (the layout ingest reads).

    `out` ends up holding `train/`, `test/` and `train_labels.csv`; it appears only once
    everything is unpacked. The zip is kept in `.<out>.kaggle-zip/` beside `out` until then,
    so an interrupted run picks up where the kaggle package left it.

    Raises:
        HistodetectError: no kaggle package or credentials, rules not accepted, a bad
            archive, or an `out` that already holds something else.
    """
    out = Path(out)
    if (out / "train_labels.csv").is_file():
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HistodetectError(
            f"{out} already exists and is not an unpacked Kaggle download; choose a new or "
            "empty --out."
        )
    api = kaggle_api()
    cache = out.parent / f".{out.name}.kaggle-zip"
    cache.mkdir(parents=True, exist_ok=True)
    try:
        api.competition_download_files(competition, path=str(cache), quiet=not progress)
    except Exception as exc:  # the client raises its own HTTP and API errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HistodetectError(
            f"Kaggle did not give the files of {competition} ({reason}); accept the rules at "
            f"https://www.kaggle.com/c/{competition}/rules with the account of your token and rerun."
        ) from exc
    _unpack(_archive(cache, competition), out)
    shutil.rmtree(cache)
    return out


def kaggle_api() -> Any:
    """The official client, authenticated; one sentence saying what to do when it cannot be."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise HistodetectError(INSTALL_HINT) from exc
    except (Exception, SystemExit) as exc:  # older releases authenticate when imported
        raise HistodetectError(CREDENTIALS_HINT) from exc
    api = KaggleApi()
    try:
        api.authenticate()
    except (Exception, SystemExit) as exc:
        raise HistodetectError(CREDENTIALS_HINT) from exc
    return api


def _archive(cache: Path, competition: str) -> Path:
    zips = sorted(cache.glob("*.zip"))
    if not zips:
        raise HistodetectError(f"the kaggle package left no zip of {competition} in {cache}.")
    return zips[0]


def _unpack(archive: Path, out: Path) -> None:
    """Extract into a temporary folder beside `out`, check the layout, then rename it to `out`."""
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.unpack-") as tmp:
        staging = Path(tmp) / "files"
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(staging)  # extractall keeps every member inside `staging`
        except zipfile.BadZipFile as exc:
            raise HistodetectError(
                f"{archive} is not a readable zip file ({exc}); delete it and rerun."
            ) from exc
        if not (staging / "train_labels.csv").is_file():
            raise HistodetectError(f"{archive} holds no train_labels.csv; it is not {COMPETITION}.")
        if out.is_dir():
            out.rmdir()  # empty: checked before downloading
        staging.replace(out)
