"""PatchCamelyon from its Zenodo record: which files each split needs, fetched and verified."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from histodetect.data.download.checksums import PCAM_MD5, read_checksums
from histodetect.data.download.fetch import FetchOptions, FetchResult, fetch_file
from histodetect.errors import HistodetectError

ZENODO_URL = "https://zenodo.org/records/2546921/files"
"""PCam's Zenodo record; each file is fetched as `<url>/<file name>`."""
PCAM_SPLITS = ("train", "valid", "test")


def pcam_file_names(splits: Sequence[str]) -> list[str]:
    """The files of `splits`: labels and slide CSVs first (small), then the image files (large).

    Raises:
        HistodetectError: an unknown or empty split list.
    """
    unknown = [s for s in splits if s not in PCAM_SPLITS]
    if unknown or not splits:
        raise HistodetectError(
            f"--splits {','.join(splits)}: choose one or more of {', '.join(PCAM_SPLITS)}."
        )
    ordered = [s for s in PCAM_SPLITS if s in splits]
    base = "camelyonpatch_level_2_split_{}_{}"
    small = [base.format(s, k) for s in ordered for k in ("y.h5.gz", "meta.csv")]
    return small + [base.format(s, "x.h5.gz") for s in ordered]


def download_pcam(
    out: Path | str,
    splits: Sequence[str] = PCAM_SPLITS,
    base_url: str = ZENODO_URL,
    checksums: Path | str | None = None,
    options: FetchOptions | None = None,
) -> list[FetchResult]:
    """Download and verify the PCam files of `splits` into `out` (about 7.5 GB for all three).

    Files already in `out` and matching their MD5 are kept; partial files resume. The
    result is the folder `histodetect ingest` reads (`--format pcam`).

    Args:
        out: folder for the files (created if missing).
        splits: any of train, valid, test.
        base_url: mirror to fetch from, as `<base_url>/<file name>` (http or https).
        checksums: an `md5sum`-style file replacing the built-in table (PCAM_MD5).
        options: retries, timeouts and progress bars.

    Raises:
        HistodetectError: a bad argument, a download that failed, or a file whose MD5 differs.
    """
    if not base_url.startswith(("http://", "https://")):
        raise HistodetectError(f"--url must start with http:// or https:// (got {base_url}).")
    table = PCAM_MD5 if checksums is None else read_checksums(Path(checksums))
    names = pcam_file_names(splits)
    missing = [n for n in names if n not in table]
    if missing:
        raise HistodetectError(
            f"--checksums {checksums} has no MD5 for {', '.join(missing)}; add a line "
            "'<md5>  <file name>' for each."
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = base_url.rstrip("/")
    return [fetch_file(f"{url}/{name}", out / name, table[name], options) for name in names]
