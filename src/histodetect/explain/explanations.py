"""`histodetect explain`'s work: for each patch, its calibrated probability and a Grad-CAM PNG.

Reads the same inputs as `predict` (files, folders, globs, stores, PCam _x.h5) through
`inference.inputs`, scores them with `Predictor.predict_pixels`, and writes everything into a
temporary folder that is renamed to --out when complete (`histodetect.atomic`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histodetect.atomic import atomic_dir
from histodetect.data.store import check_not_in_store, foreign_entries
from histodetect.errors import HistodetectError
from histodetect.explain.gradcam import colour_overlay, gradcam, require_captum

if TYPE_CHECKING:
    from histodetect.inference.inputs import Batch
    from histodetect.inference.predictor import PredictionRow, Predictor

CSV_FILE = "explanations.csv"
CSV_COLUMNS = ["id", "probability", "class", "class_name", "overlay", "path", "error"]
PNG_SCALE = 3
"""Each PNG shows the patch and its overlay side by side, enlarged this many times."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a file, one that exists when not overwriting, and one that holds
    something other than explanations even when overwriting (it would be deleted), or lies in
    a patch store."""
    if out.exists() and not out.is_dir():
        raise HistodetectError(f"--out {out} is a file; give a folder for the explanations.")
    check_not_in_store(out, "explanations")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise HistodetectError(f"--out {out} already exists; choose another or pass --overwrite.")
    if not (out / CSV_FILE).is_file():
        raise HistodetectError(
            f"--out {out} holds no {CSV_FILE}, so it is not an explain output that --overwrite "
            "may replace; choose another --out."
        )
    foreign = foreign_entries(out, (CSV_FILE, *_listed_overlays(out / CSV_FILE)))
    if foreign:
        raise HistodetectError(
            f"--out {out} also holds {foreign[0]}, which explain did not write, so --overwrite "
            "will not replace it; move that away or choose another --out (nothing was changed)."
        )


def _listed_overlays(csv_path: Path) -> tuple[str, ...]:
    """The PNG names an earlier explain listed in its CSV (its overlay column)."""
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            return tuple(row["overlay"] for row in csv.DictReader(f) if row.get("overlay"))
    except (OSError, UnicodeDecodeError, KeyError, csv.Error):
        return ()


def explain_inputs(
    inputs: Sequence[str | Path],
    out: Path,
    predictor: Predictor,
    *,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 0,
    resize: bool = False,
    center_crop: bool = False,
) -> list[PredictionRow]:
    """Write `<id>.png` (patch | Grad-CAM overlay) per patch and explanations.csv to `out`.

    Returns:
        One row per input patch, in order; unreadable files have an error and no PNG.
    """
    from tqdm import tqdm

    from histodetect.inference.inputs import collect_inputs, iter_batches
    from histodetect.parallel import default_workers

    require_captum()
    check_out_folder(out, overwrite)
    groups = collect_inputs(inputs)
    batches = iter_batches(
        groups, predictor.spec.patch_size_px, resize=resize, center_crop=center_crop,
        workers=workers or default_workers(),
    )  # fmt: skip
    with atomic_dir(out, replace=overwrite) as tmp:
        total = sum(group.n_patches for group in groups)
        with tqdm(total=total, unit="patch", desc="explain", disable=not progress) as bar:
            rows, names = _explain_batches(batches, predictor, tmp, bar.update)
        _write_csv(tmp / CSV_FILE, rows, names, predictor)
    return rows


def _explain_batches(
    batches: Iterable[Batch], predictor: Predictor, folder: Path, advance: Callable[[int], object]
) -> tuple[list[PredictionRow], list[str | None]]:
    """Score and explain each batch, saving one PNG per readable patch into `folder`.

    Returns:
        The rows in order, and each row's PNG file name (None for an unreadable one), by
        position: one input given twice is two rows with two PNGs.
    """
    from histodetect.inference.predictor import batch_rows

    rows: list[PredictionRow] = []
    names: list[str | None] = []
    taken: set[str] = set()
    for batch in batches:
        probs = predictor.predict_pixels(batch.pixels)
        heat = gradcam(predictor.model, predictor.spec, batch.pixels, device=predictor.device,
                       probabilities=probs)  # the class explained is the one reported  # fmt: skip
        new_rows = batch_rows(batch, probs)
        readable = iter(zip(batch.pixels, heat, strict=True))
        for row in new_rows:
            if row.error is not None:
                names.append(None)
                continue
            patch, h = next(readable)
            name = _png_name(row.id, taken)
            taken.add(name)
            names.append(name)
            _save_pair(folder / name, patch, colour_overlay(patch, h))
        rows += new_rows
        advance(len(new_rows))
    return rows, names


def _png_name(patch_id: str, taken: set[str]) -> str:
    base = _UNSAFE.sub("_", patch_id) or "patch"
    name, n = f"{base}.png", 1
    while name in taken:
        n += 1
        name = f"{base}-{n}.png"
    return name


def _save_pair(path: Path, patch: np.ndarray, overlay: np.ndarray) -> None:
    from PIL import Image

    pair = np.concatenate([patch, overlay], axis=1)
    big = pair.repeat(PNG_SCALE, axis=0).repeat(PNG_SCALE, axis=1)
    Image.fromarray(big).save(path, format="PNG")


def _write_csv(
    path: Path, rows: Sequence[PredictionRow], names: Sequence[str | None], predictor: Predictor
) -> None:
    spec = predictor.spec
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row, name in zip(rows, names, strict=True):
            record = dict.fromkeys(CSV_COLUMNS, "")
            record |= {"id": row.id, "path": row.path, "error": row.error or ""}
            if row.probability is not None:
                label = int(row.probability >= spec.threshold)
                record |= {"probability": f"{row.probability:.6f}", "class": str(label),
                           "class_name": spec.class_names[label], "overlay": name or ""}  # fmt: skip
            writer.writerow(record)
