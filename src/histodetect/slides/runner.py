"""Many slides in one run: checks before any work, --shard i/n, resume, one folder per slide."""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histodetect.data.store import check_not_in_store, foreign_entries
from histodetect.errors import HistodetectError
from histodetect.slides.analysis import analyse_slide, resolve_slide_mpp
from histodetect.slides.outputs import (
    SLIDE_OUTPUTS,
    finished_summary,
    is_finished,
    is_own_result,
    slide_folder_name,
    summarise,
    write_slide_outputs,
)
from histodetect.slides.reader import open_slide
from histodetect.slides.regions import require_shapely, tumour_regions
from histodetect.slides.tiling import check_stride

if TYPE_CHECKING:
    from histodetect.inference.predictor import Predictor


@dataclass(frozen=True)
class SlideOptions:
    """How slides are read and scored.

    Attributes:
        stride_px: cell side in model pixels.
        mpp: microns per level-0 pixel for every slide, overriding their metadata.
        reader: backend name (see `histodetect.slides.reader.BACKENDS`).
        overwrite: redo slides that already have a finished folder.
        progress: show a progress bar per slide.
    """

    stride_px: int = 32
    mpp: float | None = None
    reader: str = "auto"
    overwrite: bool = False
    progress: bool = True


@dataclass
class SlidesOutcome:
    """What a run did: summaries of the slides done, folders skipped, one message per failure."""

    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def parse_shard(text: str | None) -> tuple[int, int]:
    """`--shard i/n` as (i, n), 1 <= i <= n; None means (1, 1), all slides."""
    if text is None:
        return 1, 1
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = 0, 0
    if not 1 <= i <= n:
        raise HistodetectError(
            f"--shard {text!r} must be i/n with 1 <= i <= n, e.g. --shard 2/4 for the second of "
            "four jobs."
        )
    return i, n


def shard_slides(paths: Sequence[Path], shard: tuple[int, int]) -> list[Path]:
    """Slides of shard i of n: every n-th slide from the i-th, in the order given (duplicates once)."""
    unique = list(dict.fromkeys(paths))
    index, count = shard
    return unique[index - 1 :: count]


def check_out(out: Path) -> None:
    """Create --out if needed and prove it is writable, or raise one sentence naming it."""
    if out.exists() and not out.is_dir():
        raise HistodetectError(f"--out {out} is a file; give a folder for the slide results.")
    check_not_in_store(out, "slide results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise HistodetectError(
            f"--out {out} cannot be written ({exc.strerror or exc}); choose a folder you can write to."
        ) from None


def check_slides(paths: Sequence[Path], out: Path, options: SlideOptions) -> dict[Path, str]:
    """Open every slide and check its resolution and its output folder before any work.

    Returns:
        The slides that cannot be analysed (missing, unsupported or unreadable, or without a
        resolution and no --mpp), each with its sentence, when others can: those go on (a
        damaged slide stopped the whole batch, against the README's word).

    Raises:
        HistodetectError: every slide cannot be analysed (the first one's sentence), two
            slides that would share an output folder, or an output folder in the way.
    """
    require_shapely()
    folders: dict[str, Path] = {}
    for path in paths:
        name = slide_folder_name(path)
        if name in folders:
            raise HistodetectError(
                f"slides {folders[name]} and {path} would both write to {out / name}; rename "
                "one, or run them with different --out."
            )
        folders[name] = path
        _check_result_folder(out / name, path, options.overwrite)
    unreadable: dict[Path, str] = {}
    for path in paths:
        try:
            with open_slide(path, options.reader) as reader:
                resolve_slide_mpp(reader, options.mpp)
        except HistodetectError as exc:
            unreadable[path] = str(exc)
    if unreadable and len(unreadable) == len(paths):
        raise HistodetectError(next(iter(unreadable.values())))
    return unreadable


def _check_result_folder(folder: Path, path: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output folder for slide `path` that a run cannot use: a
    file, an incomplete result (without --overwrite), or files histodetect did not write."""
    if folder.exists() and not folder.is_dir():
        raise HistodetectError(
            f"{folder} is a file, not a slide result, where {path}'s results go; move it "
            "away or choose another --out (nothing was changed)."
        )
    own, finished = is_own_result(folder), is_finished(folder)
    unfinished = folder.is_dir() and not finished and any(folder.iterdir())
    if unfinished and own and not overwrite:
        raise HistodetectError(
            f"{folder} holds an incomplete slide result (one of the files histodetect "
            "writes is missing or damaged); --overwrite redoes it."
        )
    if unfinished and not own:
        raise HistodetectError(
            f"{folder} exists but holds no finished slide result (one of its files is "
            "missing or summary.json is not the one histodetect writes); move it away or "
            "choose another --out."
        )
    foreign = foreign_entries(folder, SLIDE_OUTPUTS) if finished else []
    if overwrite and foreign:
        raise HistodetectError(
            f"{folder} also holds {foreign[0]}, which histodetect did not write, so "
            "--overwrite will not replace it; move that away or choose another --out "
            "(nothing was changed)."
        )


def run_slides(
    paths: Sequence[Path],
    out: Path,
    predictor: Predictor,
    options: SlideOptions,
    on_slide: Callable[[Path, dict[str, Any] | None, list[str]], None] | None = None,
) -> SlidesOutcome:
    """Analyse each slide into `out/<slide name>/`, skipping finished ones unless overwriting.

    A slide that fails while it is processed (no tissue, a damaged tile) is reported in
    `failed` and leaves no folder; the others go on. `on_slide(folder, summary, made_with)` is
    called as each slide is done (`summary` None: skipped, with what the kept result was made with
    that differs from this run), so a run stopped later has said what it did.
    """
    check_stride(options.stride_px, predictor.spec.patch_size_px)  # once, not once per slide
    unreadable = check_slides(paths, out, options)
    created = not out.exists()  # removed again if nothing is written into it
    check_out(out)
    outcome = SlidesOutcome()
    model = _model_info(predictor)
    for sentence in unreadable.values():
        outcome.failed.append(sentence)
        print(f"histodetect slide: error: {sentence}", file=sys.stderr)
    try:
        for path in (path for path in paths if path not in unreadable):
            folder = out / slide_folder_name(path)
            kept = None if options.overwrite else finished_summary(folder)
            if kept is not None:
                outcome.skipped.append(folder)
                if on_slide is not None:
                    on_slide(folder, None, _made_otherwise(kept, options, model))
                continue
            try:
                outcome.done.append(_one_slide(path, folder, predictor, options, model))
                if on_slide is not None:
                    on_slide(folder, outcome.done[-1], [])
            except HistodetectError as exc:
                outcome.failed.append(str(exc))
                print(f"histodetect slide: error: {exc}", file=sys.stderr)
    finally:
        if created and not any(out.iterdir()):
            out.rmdir()  # this run made --out and wrote nothing into it: leave no trace
    return outcome


def _one_slide(
    path: Path, folder: Path, predictor: Predictor, options: SlideOptions, model: dict[str, Any]
) -> dict[str, Any]:
    with open_slide(path, options.reader) as reader:
        analysis = analyse_slide(
            reader,
            predictor,
            stride_px=options.stride_px,
            mpp=options.mpp,
            progress=options.progress,
        )
    grid = analysis.grid
    regions = tumour_regions(
        analysis.probabilities,
        predictor.spec.threshold,
        grid.stride_px * grid.level0_per_model_px,
        grid.cell_area_mm2,
    )
    summary = summarise(analysis, regions, model)
    write_slide_outputs(analysis, regions, summary, folder)
    summary["folder"] = str(folder)
    return summary


def _made_otherwise(
    summary: dict[str, Any], options: SlideOptions, model: dict[str, Any]
) -> list[str]:
    """What a kept result (its `summary`) was made with that this run would do otherwise (a
    rerun with another --stride-px, --tta or model skipped it without a word); what the
    summary does not record is not compared."""
    recorded = summary.get("model")
    kept: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    said = []
    if "stride_px" in summary and summary["stride_px"] != options.stride_px:
        said.append(f"--stride-px {summary['stride_px']}")
    said.extend(_mpp_otherwise(summary, options.mpp))
    if "tta" in kept and kept["tta"] != model["tta"]:
        said.append("--tta" if kept["tta"] else "no --tta")
    if "path" in kept and Path(str(kept["path"])).resolve() != Path(model["path"]).resolve():
        said.append(f"the model {kept['path']}")
    elif any(key in kept and kept[key] != model[key] for key in ("threshold", "temperature")):
        said.append("the model before it was recalibrated")
    return said


def _mpp_otherwise(summary: dict[str, Any], mpp: float | None) -> list[str]:
    """The resolution a kept result was made at, where this run's --mpp (or its absence)
    asks another: a rerun with a corrected --mpp kept the wrong result without a word."""
    kept, source = summary.get("slide_mpp"), summary.get("slide_mpp_source")
    if not isinstance(kept, int | float) or isinstance(kept, bool):
        return []
    if mpp is not None and not math.isclose(kept, mpp, rel_tol=1e-6):
        return [f"--mpp {kept:g}" if source == "--mpp" else f"the slide's own {kept:g} µm/px"]
    if mpp is None and source == "--mpp":
        return [f"--mpp {kept:g}"]
    return []


def _model_info(predictor: Predictor) -> dict[str, Any]:
    spec = predictor.spec
    return {
        "path": os.fspath(predictor.model_path),
        "name": spec.model_name,
        "threshold": spec.threshold,
        "temperature": spec.temperature,
        "tta": predictor.tta,
        "device": predictor.device_name,
    }
