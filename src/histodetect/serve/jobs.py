"""Slide jobs: each slide is analysed by `slides.runner.run_slides` on a worker thread, outside
the request, into its own folder; clients poll the job for progress and fetch its outputs.

The job's forward passes go through the server's `MicroBatcher`, like every other use of the
model, so patch requests keep being answered while a slide is scored.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histodetect.errors import HistodetectError
from histodetect.inference.predictor import Predictor
from histodetect.serve.batching import MicroBatcher, QueueFullError
from histodetect.serve.http_errors import ApiError, api_wording
from histodetect.serve.slide_job import JOB_FILE, JOB_ID, OUTPUT_FILES, SlideJob

if TYPE_CHECKING:
    from histodetect.models.spec import ModelSpec
    from histodetect.slides.runner import SlideOptions

LOG = logging.getLogger("histodetect.serve")
KEEP_FINISHED = 100
"""Finished jobs remembered (oldest forgotten first, their folders deleted)."""


class SlideJobs:
    """Slide jobs run one at a time on a worker thread, at most `max_jobs` waiting or running.

    Args:
        predictor: the server's loaded model.
        batcher: the queue every forward pass goes through.
        jobs_dir: where each job gets a folder `<id>/`.
        max_jobs: most jobs queued or running; more are refused (503).
    """

    def __init__(
        self, predictor: Predictor, batcher: MicroBatcher, jobs_dir: Path, max_jobs: int
    ) -> None:
        self.predictor = predictor
        self.batcher = batcher
        self.jobs_dir = jobs_dir
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, SlideJob] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slide-job")
        self._restore()

    def _restore(self) -> None:
        """Take over the jobs an earlier server left in jobs_dir (oldest first), so their
        status and outputs are still served and the oldest are still deleted in turn (they were
        kept for ever, unknown to the new server); folders not named as a job are left alone."""
        if not self.jobs_dir.is_dir():
            return
        from histodetect.atomic import remove_stale

        folders = [p for p in self.jobs_dir.iterdir() if p.is_dir() and JOB_ID.fullmatch(p.name)]
        for folder in folders:
            remove_stale(folder / JOB_FILE)  # a job.json write killed half-way
        for job in sorted(map(SlideJob.restored, folders), key=lambda job: job.created_s):
            self._jobs[job.id] = job
            self._save(job)
        if folders:
            LOG.info("took over %d slide jobs from %s", len(folders), self.jobs_dir)
        self._forget_old()

    def _active(self) -> int:
        """Jobs waiting or running (the caller holds the lock)."""
        return sum(job.status in ("queued", "running") for job in self._jobs.values())

    def full(self) -> bool:
        """True when no job can be created now (`create` would raise QueueFullError)."""
        with self._lock:
            return self._active() >= self.max_jobs

    def create(self, slide: str) -> SlideJob:
        """A new queued job with an empty folder, or QueueFullError when too many are open."""
        with self._lock:
            active = self._active()
            if active >= self.max_jobs:
                raise QueueFullError(f"{active} slide jobs are waiting or running")
            job_id = uuid.uuid4().hex
            job = SlideJob(job_id, slide, self.jobs_dir / job_id)
            job.folder.mkdir(parents=True)
            self._save(job)
            self._jobs[job_id] = job
            self._forget_old()
        return job

    def discard(self, job: SlideJob) -> None:
        """Forget a job that never started (its request was refused) and delete its folder."""
        with self._lock:
            self._jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def start(self, job: SlideJob, slide: Path, options: SlideOptions, uploaded: bool) -> None:
        """Queue the analysis of `slide` for `job`; an uploaded slide is deleted afterwards."""
        self._executor.submit(self._run, job, slide, options, uploaded)

    def get(self, job_id: str) -> SlideJob:
        """The job with this id, or ApiError 404."""
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"there is no slide job {job_id[:40]!r} on this server.")
        return job

    def output(self, job_id: str, link: str) -> Path:
        """The file behind link `link` of a finished job, or ApiError 404/409."""
        job = self.get(job_id)
        if link not in OUTPUT_FILES:
            raise ApiError(404, f"a slide job has no output {link[:40]!r}; see its links.")
        if job.result is None:
            raise ApiError(409, f"slide job {job_id} is {job.status}, not done; poll it first.")
        return job.result / OUTPUT_FILES[link]

    def join(self) -> None:
        """Wait for a running job to finish (after `close`): until then it may still write."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop taking jobs. A running job is left to finish (the interpreter waits for it at
        exit); a queued one never runs, so it is marked failed and its upload deleted (they
        stayed "queued" with up to --max-slide-mb each left in --jobs-dir)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            queued = [job for job in self._jobs.values() if job.status == "queued"]
        for job in queued:
            job.error = "the server stopped before the slide was analysed; submit it again."
            job.status = job.stage = "failed"
            shutil.rmtree(job.folder / "upload", ignore_errors=True)
            self._save(job)

    def _forget_old(self) -> None:
        finished = [job for job in self._jobs.values() if job.status in ("done", "failed")]
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job.id]
            shutil.rmtree(job.folder, ignore_errors=True)

    def _run(self, job: SlideJob, slide: Path, options: SlideOptions, uploaded: bool) -> None:
        from histodetect.slides.outputs import slide_folder_name
        from histodetect.slides.runner import run_slides

        job.status, job.stage = "running", "masking"
        try:
            job.tiles_total = count_tissue_tiles(slide, self.predictor.spec, options)
            job.stage = "scoring"
            scorer = JobPredictor(self.predictor, self.batcher, job)
            outcome = run_slides([slide], job.folder / "result", scorer, options)
            if outcome.failed:
                raise HistodetectError(outcome.failed[0])
            job.summary = public_summary(outcome.done[0], job.slide)
            job.result = job.folder / "result" / slide_folder_name(slide)
            _strip_server_paths(job.result, outcome.done[0], job.summary)
            job.status = job.stage = "done"
        except HistodetectError as exc:
            job.error = api_wording(str(exc).replace(str(slide), job.slide))  # no server paths
            job.status = job.stage = "failed"
        except QueueFullError:  # only raised to slide jobs when the batcher has closed
            job.error = "the server stopped before the slide was done; submit it again."
            job.status = job.stage = "failed"
        except OSError as exc:  # the server's disk, not the client's slide and not a bug
            LOG.error(
                "slide job %s (%s) could not write its results", job.id, job.slide, exc_info=exc
            )
            job.error = (
                "the server could not write the slide's results (its --jobs-dir is full or not "
                f"writable: {exc.strerror or type(exc).__name__}); tell the server's operator."
            )
            job.status = job.stage = "failed"
        except Exception as exc:
            LOG.error("slide job %s (%s) failed", job.id, job.slide, exc_info=exc)
            job.error = (
                "internal error while analysing the slide (a bug in histodetect; the server's "
                f"log has the details): {type(exc).__name__}."
            )
            job.status = job.stage = "failed"
        finally:
            if uploaded:
                slide.unlink(missing_ok=True)
            self._save(job)

    @staticmethod
    def _save(job: SlideJob) -> None:
        """Keep a finished job's state; a disk that cannot take it only costs the restart."""
        try:
            job.save()
        except OSError as exc:
            LOG.error("slide job %s could not save its state", job.id, exc_info=exc)


class JobPredictor(Predictor):
    """The server's Predictor as a slide job sees it: the same loaded model, with every forward
    pass queued on the server's batcher and counted in the job's progress."""

    def __init__(self, inner: Predictor, batcher: MicroBatcher, job: SlideJob) -> None:
        # Deliberately no super().__init__: share the loaded model rather than load it again.
        self.__dict__.update(vars(inner))
        self._batcher = batcher
        self._job = job

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities of uint8 (n, S, S, 3) tiles, scored between the server's requests."""
        probabilities = self._batcher.submit(pixels, bounded=False).result()
        job = self._job
        job.tiles_scored += len(pixels)
        if job.tiles_total is not None and job.tiles_scored >= job.tiles_total:
            job.stage = "writing"
        return probabilities


def count_tissue_tiles(slide: Path, spec: ModelSpec, options: SlideOptions) -> int:
    """Tiles `analyse_slide` will score: the cells with enough tissue, by the same mask.

    Raises:
        HistodetectError: the slide cannot be opened or has no resolution.
    """
    # The mask is computed by the analysis itself too; it is cheap (about 3% of a slide's
    # time, docs/BENCHMARKS.md) and knowing the total makes the progress bar honest.
    from histodetect.slides.analysis import (
        MIN_TISSUE_FRACTION,
        mask_cells,  # the analysis's own mask step, so the count cannot drift from it
        mask_px_per_cell,
        model_mpp,
        resolve_slide_mpp,
    )
    from histodetect.slides.reader import open_slide
    from histodetect.slides.tiling import plan_grid

    with open_slide(slide, options.reader) as reader:
        slide_mpp, source = resolve_slide_mpp(reader, options.mpp)
        grid = plan_grid(
            reader, slide_mpp, model_mpp(spec), options.stride_px, spec.patch_size_px,
            mpp_source=source,
        )  # fmt: skip
        _, _, fractions = mask_cells(reader, grid, mask_px_per_cell(grid))
    return int((fractions >= MIN_TISSUE_FRACTION).sum())


def public_summary(summary: dict[str, Any], slide: str) -> dict[str, Any]:
    """A slide summary without the server's paths: the slide as the client named it, the model
    by file name."""
    public = {key: value for key, value in summary.items() if key != "folder"}
    public["slide"] = slide
    model = dict(public.get("model", {}))
    if "path" in model:
        model["path"] = Path(str(model["path"])).name
    public["model"] = model
    return public


def _strip_server_paths(folder: Path, summary: dict[str, Any], public: dict[str, Any]) -> None:
    """Make the files a client downloads say what the job's status says: summary.json and
    report.html held the upload's path under --jobs-dir and the model's path on the server."""
    import html

    from histodetect.atomic import write_text_atomic
    from histodetect.slides.outputs import SUMMARY_FILE

    write_text_atomic(folder / SUMMARY_FILE, json.dumps(public, indent=2) + "\n")
    report = folder / "report.html"
    text = report.read_text(encoding="utf-8")
    pairs = [(str(summary.get("slide", "")), str(public["slide"])),
             (str(summary.get("model", {}).get("path", "")), str(public["model"].get("path", ""))),
             (str(summary.get("folder", "")), "")]  # fmt: skip
    for private, shown in pairs:
        if private:
            text = text.replace(html.escape(private), html.escape(shown)).replace(private, shown)
            text = text.replace(json.dumps(private)[1:-1], json.dumps(shown)[1:-1])
    write_text_atomic(report, text)


def check_slide(slide: Path, name: str, spec: ModelSpec, options: SlideOptions) -> None:
    """Open the slide and plan its grid now (cheap: metadata only), so a bad slide, a missing
    resolution or a bad stride fails in the request rather than in the job.

    Raises:
        ApiError: 422 with the reader's sentence, naming the slide as the client did.
    """
    from histodetect.slides.analysis import model_mpp, resolve_slide_mpp
    from histodetect.slides.reader import open_slide
    from histodetect.slides.regions import require_shapely
    from histodetect.slides.tiling import plan_grid

    try:
        require_shapely()
        with open_slide(slide, options.reader) as reader:
            slide_mpp, source = resolve_slide_mpp(reader, options.mpp)
            plan_grid(
                reader, slide_mpp, model_mpp(spec), options.stride_px, spec.patch_size_px,
                mpp_source=source,
            )  # fmt: skip
    except HistodetectError as exc:
        raise ApiError(422, api_wording(str(exc).replace(str(slide), name)), name) from None
