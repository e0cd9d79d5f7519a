"""One slide job and its state on disk: what it is, where it stands, and its job.json, so a
server restarted on the same --jobs-dir still answers for the jobs of the one before."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT_FILES = {
    "heatmap": "heatmap.png",
    "overlay": "overlay.png",
    "mask": "mask.png",
    "regions": "regions.geojson",
    "summary": "summary.json",
    "report": "report.html",
    "tiles": "tiles.csv",
}
"""Link name -> file of a finished slide result (see `slides.outputs`)."""
JOB_FILE = "job.json"
"""Where a job's state is kept in its folder, so a server restarted on the same --jobs-dir
still answers for the jobs of the one before."""
JOB_ID = re.compile(r"[0-9a-f]{32}")
"""The folder names this server gives jobs (uuid4 hex); nothing else in --jobs-dir is touched."""
_SAVED = ("id", "slide", "status", "stage", "tiles_scored", "tiles_total", "error", "summary")


@dataclass
class SlideJob:
    """One slide analysis and where it stands.

    Attributes:
        id: random hex id, the job's only handle.
        slide: the slide's name as the client gave it (never a server path).
        folder: the job's own folder (upload, results).
        status: "queued", "running", "done" or "failed".
        stage: what runs now: "queued", "masking", "scoring", "writing", "done" or "failed".
        tiles_scored, tiles_total: tissue tiles scored so far, and in all (known once the
            tissue mask is made).
        error: why the job failed, one sentence.
        summary: the slide's summary.json figures when done.
        result: the folder of outputs when done.
    """

    id: str
    slide: str
    folder: Path
    status: str = "queued"
    stage: str = "queued"
    tiles_scored: int = 0
    tiles_total: int | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None
    result: Path | None = None
    created_s: float = field(default_factory=time.time)

    @property
    def progress(self) -> float:
        """Fraction done in [0, 1]: the share of tiles scored (writing and masking are short)."""
        if self.status == "done":
            return 1.0
        if not self.tiles_total:
            return 0.0
        return min(1.0, self.tiles_scored / self.tiles_total)

    def save(self) -> None:
        """Write the job's state to its folder's job.json (temporary name, then rename)."""
        from histodetect.atomic import write_text_atomic

        state: dict[str, Any] = {key: getattr(self, key) for key in _SAVED}
        state["created_s"] = self.created_s
        state["result"] = None if self.result is None else self.result.name
        write_text_atomic(self.folder / JOB_FILE, json.dumps(state, indent=2) + "\n")

    @classmethod
    def restored(cls, folder: Path) -> SlideJob:
        """The job an earlier server left in `folder`: finished as it was; one it never
        finished (queued or running when it stopped, or killed) is failed, and its upload and
        partial results are deleted."""
        from histodetect.slides.outputs import is_finished

        try:
            job, result = _read_saved(folder)
        except (OSError, ValueError, KeyError, TypeError):  # from before job.json, or damaged
            job, result = _read_unsaved(folder)
        job.id = folder.name
        if job.status == "done":
            job.result = folder / "result" / str(result)
            if not isinstance(job.summary, dict) or not is_finished(job.result):
                job.result = None
                job.error = "the slide's results were deleted from the server; submit it again."
                job.status = job.stage = "failed"
        elif job.status != "failed":
            job.error = "the server stopped before the slide was done; submit it again."
            job.status = job.stage = "failed"
        if job.status == "failed":
            job.summary, job.result = None, None
            for part in ("upload", "result"):
                shutil.rmtree(folder / part, ignore_errors=True)
        return job


def _read_saved(folder: Path) -> tuple[SlideJob, str | None]:
    """The job in `folder`'s job.json and its result folder's name.

    Raises:
        OSError, ValueError, KeyError, TypeError: no job.json, or not a job's state.
    """
    state = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
    job = SlideJob(folder=folder, **{key: state[key] for key in _SAVED})
    job.created_s = float(state["created_s"])
    _check_state(job, state["result"])
    return job, state["result"]


def _read_unsaved(folder: Path) -> tuple[SlideJob, str | None]:
    """A job folder without a readable job.json (from before it, or damaged): done if its
    result has a summary.json (written last, as the job's public summary), else unfinished."""
    job, result = SlideJob(folder.name, "unknown slide", folder), None
    with contextlib.suppress(OSError):  # a folder deleted meanwhile: oldest then
        job.created_s = folder.stat().st_mtime
    for summary_file in sorted(folder.glob(f"result/*/{OUTPUT_FILES['summary']}")):
        if summary_file.parent.name.startswith("."):  # a temporary folder, not renamed
            continue
        job.status = job.stage = "done"
        result = summary_file.parent.name
        with contextlib.suppress(OSError, ValueError, AttributeError):
            job.summary = json.loads(summary_file.read_text(encoding="utf-8"))
            job.slide = str(job.summary.get("slide", job.slide))
    return job, result


def _check_state(job: SlideJob, result: object) -> None:
    """Raise TypeError unless a job read from job.json holds values of the types it serves
    (a hand-edited "tiles_total": "x" made every poll of the job a 500)."""
    texts = (job.id, job.slide, job.status, job.stage)
    counts_ok = isinstance(job.tiles_scored, int) and isinstance(job.tiles_total, int | None)
    if (
        not all(isinstance(text, str) for text in texts)
        or not counts_ok
        or not isinstance(job.error, str | None)
        or not isinstance(job.summary, dict | None)
        or not isinstance(result, str | None)
        or not math.isfinite(job.created_s)
    ):
        raise TypeError("not a job's state")
