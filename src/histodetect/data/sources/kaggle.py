"""Reader for the Kaggle competition layout: train/*.tif + train_labels.csv, test/*.tif."""

from __future__ import annotations

from pathlib import Path

from histodetect.data.quality import BAD_LABEL, MISSING_IMAGE, MISSING_LABEL, Problem
from histodetect.data.sources.base import FileEntry, FileListSource
from histodetect.data.sources.labels_csv import parse_label, read_csv_rows
from histodetect.errors import HistodetectError

SLIDES_FILE = "train_slides.csv"
"""Optional `id,slide` file beside train_labels.csv (e.g. the community's patch-to-WSI map)."""


class KaggleSource(FileListSource):
    """Kaggle "Histopathologic Cancer Detection": labelled `train` split, unlabelled `test` split.

    Kaggle gives no slide ids. When `train_slides.csv` (columns `id,slide`) sits beside
    `train_labels.csv`, or `slides_csv` is given, patches get those slide ids so that splits
    can be grouped by slide.
    """

    format_name = "kaggle"

    def __init__(self, root: Path, slides_csv: Path | None = None) -> None:
        super().__init__(root)
        slides = _read_slides(slides_csv or root / SLIDES_FILE, required=slides_csv is not None)
        self._list_train(slides)
        self._list_test()

    def _list_train(self, slides: dict[str, str]) -> None:
        labels_csv = self.root / "train_labels.csv"
        files = _tifs_by_id(self.root / "train")
        if not labels_csv.is_file():
            for path in files.values():
                self.problems.append(
                    Problem(str(path), MISSING_LABEL, "has no label: no train_labels.csv")
                )
            return
        labelled: set[str] = set()
        for row in read_csv_rows(labels_csv, ("id", "label")):
            pid = row["id"]
            origin = f"{labels_csv.name}:{pid}"
            if pid in labelled:
                self.problems.append(Problem(origin, BAD_LABEL, "id listed twice"))
                continue
            labelled.add(pid)
            if pid not in files:
                self.problems.append(Problem(origin, MISSING_IMAGE, f"no image train/{pid}.tif"))
                continue
            label = parse_label(row["label"], origin, self.problems)
            if label is None:
                continue
            if label == -1:
                self.problems.append(Problem(origin, BAD_LABEL, "label is empty"))
                continue
            self.entries.append(FileEntry(files[pid], label, "train", slides.get(pid, "")))
        for pid, path in files.items():
            if pid not in labelled:
                self.problems.append(Problem(str(path), MISSING_LABEL, "not in train_labels.csv"))

    def _list_test(self) -> None:
        for path in _tifs_by_id(self.root / "test").values():
            self.entries.append(FileEntry(path, -1, "test"))


def _tifs_by_id(folder: Path) -> dict[str, Path]:
    """File stem -> path for every .tif in `folder`, sorted by name for a stable order."""
    if not folder.is_dir():
        return {}
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".tif", ".tiff"})
    return {p.stem: p for p in paths}


def _read_slides(path: Path, required: bool) -> dict[str, str]:
    if not path.is_file():
        if required:
            raise HistodetectError(f"slide file {path} does not exist.")
        return {}
    return {row["id"]: row["slide"] for row in read_csv_rows(path, ("id", "slide"))}


def looks_like_kaggle(root: Path) -> bool:
    """A folder with train_labels.csv, or with train/ or test/ holding .tif files."""
    if (root / "train_labels.csv").is_file():
        return True
    return any(
        (root / sub).is_dir()
        and any(p.suffix.lower() in {".tif", ".tiff"} for p in (root / sub).iterdir())
        for sub in ("train", "test")
    )
