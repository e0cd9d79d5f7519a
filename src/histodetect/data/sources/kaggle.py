"""Reader for the Kaggle competition layout: train/*.tif + train_labels.csv, test/*.tif."""

from __future__ import annotations

from pathlib import Path

from histodetect.data.quality import (
    AMBIGUOUS_ID,
    BAD_LABEL,
    LABEL_CONFLICT,
    MISSING_IMAGE,
    MISSING_LABEL,
    MISSING_SLIDE,
    Problem,
)
from histodetect.data.sources.base import FileEntry, FileListSource
from histodetect.data.sources.labels_csv import parse_label, read_csv_rows
from histodetect.errors import HistodetectError

TIFF_SUFFIXES = (".tif", ".tiff")
NO_SLIDE = (
    "not in the slide file (or its slide is empty): kept without a slide, so the store cannot "
    "be split by slide and train falls back to a random split"
)
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

    def _list_train(self, slides: dict[str, str] | None) -> None:
        labels_csv = self.root / "train_labels.csv"
        files, ambiguous = self._tifs_by_id(self.root / "train")
        if not labels_csv.is_file():
            for path in files.values():
                self.problems.append(
                    Problem(str(path), MISSING_LABEL, "has no label: no train_labels.csv")
                )
            return
        labels = self._read_labels(labels_csv)
        for pid, label in labels.items():
            if label is None or pid in ambiguous:
                continue  # already reported
            if pid not in files:
                origin = f"{labels_csv.name}:{pid}"
                self.problems.append(Problem(origin, MISSING_IMAGE, f"no image train/{pid}.tif"))
                continue
            slide = "" if slides is None else slides.get(pid, "")
            if slides is not None and not slide:
                self.problems.append(Problem(str(files[pid]), MISSING_SLIDE, NO_SLIDE))
            self.entries.append(FileEntry(files[pid], label, "train", slide, named_by_id=True))
        for pid, path in files.items():
            if pid not in labels:
                self.problems.append(Problem(str(path), MISSING_LABEL, "not in train_labels.csv"))

    def _read_labels(self, labels_csv: Path) -> dict[str, int | None]:
        """id -> 0/1 from train_labels.csv; None for an id whose label is bad or conflicting."""
        labels: dict[str, int | None] = {}
        for row in read_csv_rows(labels_csv, ("id", "label"), self.problems):
            pid = row["id"]
            origin = f"{labels_csv.name}:{pid}"
            label = parse_label(row["label"], origin, self.problems)
            if label == -1:
                self.problems.append(Problem(origin, BAD_LABEL, "label is empty"))
                label = None
            if pid not in labels:
                labels[pid] = label
            elif label is not None and labels[pid] is not None and label != labels[pid]:
                reason = "listed with labels 0 and 1; left out (fix train_labels.csv)"
                self.problems.append(Problem(origin, LABEL_CONFLICT, reason))
                labels[pid] = None
            else:
                self.problems.append(Problem(origin, BAD_LABEL, "id listed twice"))
        return labels

    def _list_test(self) -> None:
        files, _ = self._tifs_by_id(self.root / "test")
        for path in files.values():
            self.entries.append(FileEntry(path, -1, "test", named_by_id=True))

    def _tifs_by_id(self, folder: Path) -> tuple[dict[str, Path], set[str]]:
        """File stem -> path of every .tif/.tiff in `folder`, and the ids naming several files.

        An id that names more than one file (`<id>.tif` beside `<id>.tiff`) cannot say which
        file its label belongs to: it is reported (`ambiguous_id`) and left out.
        """
        if not folder.is_dir():
            return {}, set()
        by_id: dict[str, list[Path]] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in TIFF_SUFFIXES:
                by_id.setdefault(path.stem, []).append(path)
        ambiguous = {pid for pid, paths in by_id.items() if len(paths) > 1}
        for pid in sorted(ambiguous):
            names = " and ".join(f"{folder.name}/{p.name}" for p in by_id[pid])
            reason = f"{names} share the id {pid}; neither was used (keep one of them)"
            self.problems.append(Problem(str(by_id[pid][0]), AMBIGUOUS_ID, reason))
        return {pid: paths[0] for pid, paths in by_id.items() if pid not in ambiguous}, ambiguous


def _read_slides(path: Path, required: bool) -> dict[str, str] | None:
    """id -> slide from an `id,slide` file; None when there is no slide file (an empty one is
    {}: every patch is then reported as missing from it)."""
    if not path.is_file():
        if required:
            raise HistodetectError(f"slide file {path} does not exist.")
        return None
    return {row["id"]: row["slide"] for row in read_csv_rows(path, ("id", "slide"))}


def looks_like_kaggle(root: Path) -> bool:
    """A folder with train_labels.csv, or with train/ or test/ holding .tif files."""
    if (root / "train_labels.csv").is_file():
        return True
    return any(
        (root / sub).is_dir()
        and any(p.suffix.lower() in TIFF_SUFFIXES for p in (root / sub).iterdir())
        for sub in ("train", "test")
    )
