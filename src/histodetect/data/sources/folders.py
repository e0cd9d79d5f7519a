"""Reader for class folders: <root>/[<split>/]<label>/*.{tif,png,jpg}."""

from __future__ import annotations

from pathlib import Path

from histodetect.data.quality import BAD_LABEL, MISSING_LABEL, Problem
from histodetect.data.sources.base import FileEntry, FileListSource
from histodetect.data.sources.image_file import IMAGE_SUFFIXES
from histodetect.errors import HistodetectError

LABEL_FOLDERS = {"0": 0, "1": 1}


class FolderSource(FileListSource):
    """Images sorted into label folders `0` and `1`, optionally inside split folders.

    `pcam-subset/train/1/patch0000012.jpg` is label 1 of split `train`. Folders with other
    names at the label level are reported as bad labels; images outside the label folders
    are reported as unlabelled (they were left out in silence); other files are ignored.
    """

    format_name = "folders"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        if has_label_folders(root):
            self._list_split(root, "")
        else:
            self._report_loose(root)
            for split_dir in _subdirs(root):
                self._list_split(split_dir, split_dir.name)
        if not self.entries and not self.problems:
            raise HistodetectError(
                f"{root} holds no images in label folders 0/ and 1/ "
                "(expected <root>/[<split>/]<label>/*.png|jpg|tif)."
            )

    def _report_loose(self, folder: Path) -> None:
        """Images directly in `folder`, where only label (or split) folders belong."""
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                reason = "an image outside the label folders 0/ and 1/, so it has no label; skipped"
                self.problems.append(Problem(str(path), MISSING_LABEL, reason))

    def _list_split(self, folder: Path, split: str) -> None:
        self._report_loose(folder)
        for label_dir in _subdirs(folder):
            label = LABEL_FOLDERS.get(label_dir.name)
            if label is None:
                reason = f"folder name {label_dir.name!r} is not a label (0 or 1); skipped"
                self.problems.append(Problem(str(label_dir), BAD_LABEL, reason))
                continue
            for path in sorted(label_dir.iterdir(), key=lambda p: p.name):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    self.entries.append(FileEntry(path, label, split))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def has_label_folders(folder: Path) -> bool:
    """True when `folder` directly holds a `0` or `1` sub-folder."""
    return any((folder / name).is_dir() for name in LABEL_FOLDERS)


def looks_like_folders(root: Path) -> bool:
    """Label folders at the top, or split folders that each hold label folders."""
    return has_label_folders(root) or any(has_label_folders(d) for d in _subdirs(root))
