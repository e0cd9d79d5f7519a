"""MD5 checksums: the PCam table kept in the package, `md5sum`-style files, and hashing a file."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tqdm import tqdm

from histodetect.errors import HistodetectError

HASH_CHUNK_BYTES = 8 << 20

# MD5 of each file of PCam's Zenodo record 2546921, by file name.
#
# The table in the basveeling/pcam README pairs the valid and test values the wrong way round
# (for _x, _y and _meta); these are the values of the files as actually served:
# - basveeling/pcam issue #1 (2018-11): md5sum of the downloaded x/y files; the author answered
#   "your files should be correct" (a copy/paste mismatch in the README);
# - basveeling/pcam issue #4 (2021-07 comment): md5sum of all nine files, meta CSVs included;
# - tensorflow/datasets issue #1551 (2020-03): the checksums Zenodo itself lists for the
#   record (test_meta, test_x and test_y quoted there; they agree with this table);
# - pytorch/vision PR #6644 (2022-09, "swap MD5 checksums of PCAM val and test split"):
#   torchvision's corrected x/y values, identical to this table;
# - tand826/PatchCamelyon_h5ToImage sums.txt (2019-08, written when the README values for
#   valid_x and test_x were found wrong): all nine, identical to this table.
# The train values agree in every source. Not checked here against the live Zenodo page (no
# network where this was written): a mirror serving other bytes needs --checksums FILE.
PCAM_MD5 = {
    "camelyonpatch_level_2_split_train_x.h5.gz": "1571f514728f59376b705fc836ff4b63",
    "camelyonpatch_level_2_split_train_y.h5.gz": "35c2d7259d906cfc8143347bb8e05be7",
    "camelyonpatch_level_2_split_train_meta.csv": "5a3dd671e465cfd74b5b822125e65b0a",
    "camelyonpatch_level_2_split_valid_x.h5.gz": "d5b63470df7cfa627aeec8b9dc0c066e",
    "camelyonpatch_level_2_split_valid_y.h5.gz": "2b85f58b927af9964a4c15b8f7e8f179",
    "camelyonpatch_level_2_split_valid_meta.csv": "67589e00a4a37ec317f2d1932c7502ca",
    "camelyonpatch_level_2_split_test_x.h5.gz": "d8c2d60d490dbd479f8199bdfa0cf6ec",
    "camelyonpatch_level_2_split_test_y.h5.gz": "60a7035772fbdb7f34eb86d4420cf66a",
    "camelyonpatch_level_2_split_test_meta.csv": "3455fd69135b66734e1008f3af684566",
}

_MD5SUM_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *](.+)$")


def read_checksums(path: Path) -> dict[str, str]:
    """File name -> lower-case MD5 from lines `<md5>  <file name>`, as `md5sum` writes them.

    Blank lines and lines starting with `#` are skipped; a path in the name counts by its
    last part (`./x.h5.gz` is `x.h5.gz`).

    Raises:
        HistodetectError: the file is missing or a line is not in that form.
    """
    if path.is_dir():
        raise HistodetectError(f"--checksums {path} is a folder; give the md5sum file in it.")
    if not path.is_file():
        raise HistodetectError(f"--checksums file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "cannot be read"
        raise HistodetectError(
            f"--checksums {path} {why}; give the text file md5sum writes ('<md5>  <file name>')."
        ) from None
    table: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _MD5SUM_LINE.match(line.rstrip())
        if m is None:
            raise HistodetectError(
                f"--checksums {path} line {number} is not '<md5>  <file name>' as md5sum writes it."
            )
        table[Path(m.group(2)).name] = m.group(1).lower()
    return table


def file_md5(path: Path, progress: bool = False, label: str = "") -> str:
    """Hex MD5 of the bytes of `path`, read in 8 MiB chunks (never the whole file in memory).

    `label` names the file on the progress bar (default: its name).
    """
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check, not security
    with (
        path.open("rb") as f,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"verify {label or path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()
