"""Slide jobs over HTTP: upload or name a slide, poll progress, fetch the outputs; names that
leave --slides-dir, bad slides and a full job queue are refused with a sentence."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from histodetect.serve.limits import ServeLimits
from slidefiles import LEVEL0_MPP, canvas, write_pyramid

pytest.importorskip("shapely", reason="slides need the slides extra")
STRIDE = {"stride_px": "96"}  # one tile per patch of the layout: a quick job


@pytest.fixture(scope="module")
def slides_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """layout.tif (real PCam valid patches, a tumour block) and blank.tif (glass only)."""
    folder = tmp_path_factory.mktemp("slides")
    image, _ = canvas(shared_data)
    write_pyramid(folder / "layout.tif", image.repeat(2, axis=0).repeat(2, axis=1), LEVEL0_MPP)
    blank = np.full((512, 512, 3), 240, dtype=np.uint8)
    write_pyramid(folder / "blank.tif", blank, LEVEL0_MPP, n_levels=1)
    Image.fromarray(image[:384, :384]).save(folder / "no-mpp.png")
    (folder / "sub").mkdir()
    return folder


def wait_for(client: Any, url: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        job = client.get(url).json()
        seen.append(job["progress"])
        if job["status"] in ("done", "failed"):
            assert seen == sorted(seen)  # progress never goes back
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {url} did not finish in {timeout_s} s")


def test_an_uploaded_slide_becomes_heatmap_regions_and_summary(
    make_client: Any, slides_dir: Path, bundled: Any
) -> None:
    client = make_client()
    slide = slides_dir / "layout.tif"
    files = {"file": ("my slide.tif", slide.read_bytes(), "image/tiff")}
    accepted = client.post("/v1/slides", files=files, data=STRIDE)
    assert accepted.status_code == 202, accepted.text
    job = wait_for(client, accepted.json()["url"])
    assert job["status"] == "done" and job["error"] is None, job
    assert job["progress"] == 1.0 and job["slide"] == "my slide.tif"
    summary = job["summary"]
    # the progress counts exactly the tiles the analysis scores (at most one per patch)
    assert job["tiles_total"] == job["tiles_scored"] == summary["n_tiles"]
    assert 60 <= summary["n_tiles"] <= 120
    assert summary["max_probability"] >= bundled.spec.threshold and summary["n_regions"] >= 1
    text = json.dumps(job)
    assert str(client.app.state.context.jobs.jobs_dir) not in text and "/tmp/" not in text
    overlay = client.get(job["links"]["overlay"])
    assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
    regions = client.get(job["links"]["regions"]).json()
    assert regions["type"] == "FeatureCollection" and regions["features"]
    assert client.get(job["links"]["summary"]).json() == summary
    report = client.get(job["links"]["report"]).text
    assert report.lstrip().lower().startswith("<!doctype html")
    # the files a client downloads held the upload's path and the model's path on the server
    jobs_dir, model_dir = (
        str(client.app.state.context.jobs.jobs_dir),
        str(bundled.model_path.parent),
    )
    for served in (client.get(job["links"]["summary"]).text, report):
        assert jobs_dir not in served and model_dir not in served
    assert "my slide.tif" in report
    # the uploaded copy is gone once the job is done; the results stay
    job_folder = client.app.state.context.jobs.get(job["id"]).folder
    assert not list(job_folder.glob("upload/*")) and list(job_folder.glob("result/*/heatmap.png"))


def test_slides_named_inside_slides_dir(make_client: Any, slides_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.tif"
    outside.write_bytes((slides_dir / "blank.tif").read_bytes())
    link = slides_dir / "sub" / "link.tif"
    if not link.is_symlink():
        link.symlink_to(outside)
    client = make_client(slides_dir=slides_dir)
    listed = client.get("/v1/slides").json()["slides"]
    assert "layout.tif" in listed and "sub/link.tif" not in listed
    accepted = client.post("/v1/slides", data={"name": "layout.tif", **STRIDE})
    assert accepted.status_code == 202, accepted.text
    assert wait_for(client, accepted.json()["url"])["status"] == "done"
    for name in (
        "../secret.tif",
        str(outside),
        "sub/../../secret.tif",
        "sub/link.tif",
        ".hidden.tif",
        "x" * 5000,
        "sub\\..\\x.tif",
    ):
        refused = client.post("/v1/slides", data={"name": name})
        assert refused.status_code == 422, (name, refused.text)
        assert refused.json()["file"] == name and str(slides_dir) not in refused.json()["error"]
    missing = client.post("/v1/slides", data={"name": "nope.tif"})
    assert missing.status_code == 404 and "nope.tif" in missing.json()["error"]
    no_dir = make_client()  # without --slides-dir only uploads are taken
    assert no_dir.post("/v1/slides", data={"name": "layout.tif"}).status_code == 422
    assert no_dir.get("/v1/slides").json()["slides"] == []


def test_bad_slides_are_refused_in_the_request(make_client: Any, slides_dir: Path) -> None:
    client = make_client()
    jobs_dir = client.app.state.context.jobs.jobs_dir
    text = client.post(
        "/v1/slides", files={"file": ("notes.svs", b"not a slide at all", "image/tiff")}
    )
    assert text.status_code == 415 and text.json()["file"] == "notes.svs"
    png = (slides_dir / "no-mpp.png").read_bytes()
    no_mpp = client.post("/v1/slides", files={"file": ("scan.png", png, "image/png")})
    assert no_mpp.status_code == 422, no_mpp.text
    error = no_mpp.json()["error"]
    assert (
        error.startswith("scan.png records no resolution")
        and "mpp" in error
        and "--mpp" not in error
    )
    assert str(jobs_dir) not in error
    assert not any(jobs_dir.iterdir())  # refused jobs leave no folder behind
    stride = client.post(
        "/v1/slides",
        files={"file": ("scan.png", png, "image/png")},
        data={"mpp": "0.972", "stride_px": "95"},
    )
    assert stride.status_code == 422 and stride.json()["error"].startswith("stride_px must lie in")
    neither = client.post("/v1/slides", data={"mpp": "0.5"})
    assert neither.status_code == 422 and "either" in neither.json()["error"]
    with_mpp = client.post(
        "/v1/slides",
        files={"file": ("scan.png", png, "image/png")},
        data={"mpp": "0.972", **STRIDE},
    )
    assert with_mpp.status_code == 202
    assert wait_for(client, with_mpp.json()["url"])["status"] == "done"


def test_a_slide_without_tissue_fails_with_a_sentence(make_client: Any, slides_dir: Path) -> None:
    client = make_client()
    blank = {"file": ("glass.tif", (slides_dir / "blank.tif").read_bytes(), "image/tiff")}
    job = wait_for(client, client.post("/v1/slides", files=blank).json()["url"])
    assert job["status"] == "failed" and job["links"] == {}
    assert job["error"].startswith("glass.tif shows no tissue"), job["error"]
    assert client.get(f"/v1/jobs/{job['id']}/files/overlay").status_code == 409


def test_jobs_unknown_unfinished_and_too_many(make_client: Any, slides_dir: Path) -> None:
    client = make_client(limits=ServeLimits(max_jobs=1))
    jobs = client.app.state.context.jobs
    waiting = jobs.create("queued.tif")  # holds the only place, never started
    assert client.get(f"/v1/jobs/{waiting.id}").json()["stage"] == "queued"
    assert client.get(f"/v1/jobs/{waiting.id}/files/overlay").status_code == 409
    assert client.get(f"/v1/jobs/{waiting.id}/files/passwd").status_code == 404
    assert client.get("/v1/jobs/0123abc").status_code == 404
    busy = client.post(
        "/v1/slides",
        files={"file": ("a.tif", (slides_dir / "layout.tif").read_bytes(), "image/tiff")},
    )
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    # answered before the body was read (a review: the whole slide was spooled and copied first)
    assert "all 1 slide jobs are waiting or running" in busy.json()["error"]
    assert [p.name for p in jobs.jobs_dir.iterdir()] == [waiting.id]
    too_big = make_client(limits=ServeLimits(max_slide_mb=0.01))
    big = too_big.post(
        "/v1/slides",
        files={"file": ("a.tif", (slides_dir / "layout.tif").read_bytes(), "image/tiff")},
    )
    assert big.status_code == 413


def test_a_job_cut_short_by_shutdown_says_so(make_client: Any, slides_dir: Path) -> None:
    from histodetect.slides.runner import SlideOptions

    client = make_client()
    context = client.app.state.context
    context.batcher.close()  # as when the server stops while a slide is scored
    job = context.jobs.create("layout.tif")
    options = SlideOptions(stride_px=96, progress=False)
    context.jobs.start(job, slides_dir / "layout.tif", options, uploaded=False)
    result = wait_for(client, f"/v1/jobs/{job.id}")
    assert result["status"] == "failed" and "server stopped" in result["error"]


def test_a_job_whose_results_cannot_be_written_says_so_not_a_bug(
    make_client: Any, slides_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a review: ENOSPC or EACCES while writing a job's outputs fell into the catch-all
    and the client read "internal error (a bug in histodetect ...)"."""
    import errno

    from histodetect.slides import runner
    from histodetect.slides.runner import SlideOptions

    def full_disk(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "run_slides", full_disk)
    client = make_client()
    context = client.app.state.context
    job = context.jobs.create("layout.tif")
    context.jobs.start(
        job, slides_dir / "layout.tif", SlideOptions(stride_px=96, progress=False), uploaded=False
    )
    result = wait_for(client, f"/v1/jobs/{job.id}")
    assert result["status"] == "failed" and "bug" not in result["error"]
    assert "could not write the slide's results" in result["error"]
    assert "No space left on device" in result["error"]


def test_a_job_still_queued_at_shutdown_fails_and_its_upload_goes(
    make_client: Any, slides_dir: Path
) -> None:
    """From a review: shutdown cancelled queued jobs before they ran, so they stayed "queued"
    for ever and their uploads (up to --max-slide-mb each) stayed in --jobs-dir."""
    import shutil
    import threading

    from histodetect.slides.runner import SlideOptions

    client = make_client()
    jobs = client.app.state.context.jobs
    release = threading.Event()
    jobs._executor.submit(release.wait, 10)  # the one worker is busy
    job = jobs.create("layout.tif")
    upload = job.folder / "upload" / "layout.tif"
    upload.parent.mkdir()
    shutil.copy(slides_dir / "layout.tif", upload)
    jobs.start(job, upload, SlideOptions(stride_px=96, progress=False), uploaded=True)
    jobs.close()
    release.set()
    status = client.get(f"/v1/jobs/{job.id}").json()
    assert status["status"] == "failed" and "server stopped" in status["error"]
    assert not upload.exists()


def test_a_server_restarted_on_its_jobs_dir_still_serves_the_jobs_before(
    make_client: Any, slides_dir: Path, tmp_path: Path
) -> None:
    """From a review: a server restarted with the same --jobs-dir knew none of the earlier
    jobs (404 for a finished slide's results) and never deleted their folders; a job cut off by
    the stop kept its upload (up to --max-slide-mb) for ever."""
    import shutil

    jobs_dir = tmp_path / "jobs"
    first = make_client(jobs_dir=jobs_dir)
    files = {"file": ("my slide.tif", (slides_dir / "layout.tif").read_bytes(), "image/tiff")}
    done = wait_for(first, first.post("/v1/slides", files=files, data=STRIDE).json()["url"])
    assert done["status"] == "done", done
    cut = first.app.state.context.jobs.create("cut off.tif")  # never started: as if killed
    (cut.folder / "upload").mkdir()
    shutil.copy(slides_dir / "layout.tif", cut.folder / "upload" / "cut off.tif")
    # a finished job's folder from before job.json was kept
    old = jobs_dir / ("0" * 32)
    shutil.copytree(jobs_dir / done["id"], old)
    (old / "job.json").unlink()
    # one killed before its result was renamed into place: a temporary folder only
    killed = jobs_dir / ("1" * 32)
    (result,) = (jobs_dir / done["id"] / "result").iterdir()
    shutil.copytree(result, killed / "result" / f".{result.name}.tmp-1")
    # one whose heatmap was deleted since: served as done, its link was a 500 (from a review)
    gone = jobs_dir / ("2" * 32)
    shutil.copytree(jobs_dir / done["id"], gone)
    next(gone.glob("result/*/heatmap.png")).unlink()
    mine = jobs_dir / "notes"  # not a job's folder: never touched
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")

    second = make_client(jobs_dir=jobs_dir)
    again = second.get(f"/v1/jobs/{done['id']}").json()
    assert again == done
    overlay = second.get(again["links"]["overlay"])
    assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
    assert second.get(again["links"]["summary"]).json() == done["summary"]
    stopped = second.get(f"/v1/jobs/{cut.id}").json()
    assert stopped["status"] == "failed" and stopped["slide"] == "cut off.tif"
    assert "server stopped" in stopped["error"] and not (cut.folder / "upload").exists()
    before = second.get(f"/v1/jobs/{old.name}").json()
    assert before["status"] == "done" and before["slide"] == "my slide.tif"
    assert before["summary"] == done["summary"]
    assert (mine / "keep.txt").read_text() == "mine"
    deleted = second.get(f"/v1/jobs/{gone.name}").json()
    assert deleted["status"] == "failed" and "deleted" in deleted["error"], deleted
    cut_short = second.get(f"/v1/jobs/{killed.name}").json()
    assert cut_short["status"] == "failed" and not (killed / "result").exists()


def test_jobs_taken_over_at_a_restart_are_still_deleted_oldest_first(
    make_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from histodetect.serve import jobs as jobs_module

    jobs_dir = tmp_path / "jobs"
    for n, created in enumerate([30.0, 10.0, 20.0, "damaged", 40.0]):
        folder = jobs_dir / f"{n:032x}"
        (folder / "result" / "partial").mkdir(parents=True)
        state = {"id": folder.name, "slide": f"s{n}.tif", "status": "failed", "stage": "failed",
                 "tiles_scored": 0, "tiles_total": None, "error": "x", "summary": None,
                 "created_s": created, "result": None}  # fmt: skip
        if n == 4:  # from a review: a value of the wrong type made each poll a 500
            state["tiles_total"] = "x"
        (folder / "job.json").write_text(json.dumps(state))
    monkeypatch.setattr(jobs_module, "KEEP_FINISHED", 3)
    client = make_client(jobs_dir=jobs_dir)
    left = sorted(p.name for p in jobs_dir.iterdir())
    # the damaged job.json files are taken by their folders' time (now): newest, kept with 30
    assert left == [f"{0:032x}", f"{3:032x}", f"{4:032x}"], left
    for n in (3, 4):
        damaged = client.get(f"/v1/jobs/{n:032x}")
        assert damaged.status_code == 200, damaged.text
        assert damaged.json()["status"] == "failed" and "server stopped" in damaged.json()["error"]
        assert not (jobs_dir / f"{n:032x}" / "result").exists()
