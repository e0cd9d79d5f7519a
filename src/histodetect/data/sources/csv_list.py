"""Reader for a CSV of path,label[,split][,slide] (paths relative to the CSV's folder)."""

from __future__ import annotations

from pathlib import Path

from histodetect.data.quality import MISSING_IMAGE, Problem
from histodetect.data.sources.base import FileEntry, FileListSource
from histodetect.data.sources.labels_csv import parse_label, read_numbered_rows


class CsvListSource(FileListSource):
    """Images listed in a CSV with columns `path,label` and optional `split`, `slide`.

    An empty label means unlabelled (for example a set to predict on); a label other than 0/1,
    a path that does not exist and a row with the wrong number of fields are reported as
    problems and skipped.
    """

    format_name = "csv"

    def __init__(self, csv_path: Path) -> None:
        super().__init__(csv_path)
        base = csv_path.parent
        for line, row in read_numbered_rows(csv_path, ("path", "label"), self.problems):
            origin = f"{csv_path.name}:{line}"
            path = Path(row["path"])
            path = path if path.is_absolute() else base / path
            if not _is_file(path):
                self.problems.append(Problem(origin, MISSING_IMAGE, f"no image at {path}"))
                continue
            label = parse_label(row["label"], origin, self.problems)
            if label is not None:
                self.entries.append(
                    FileEntry(path, label, row.get("split", ""), row.get("slide", ""))
                )


def _is_file(path: Path) -> bool:
    """Path.is_file that says False for names the file system refuses (e.g. too long)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
