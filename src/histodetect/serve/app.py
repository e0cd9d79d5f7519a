"""The FastAPI application of `histodetect serve`: routes only; the work lives in the modules
they call (uploads, batching, jobs, context). Build it with `create_app(predictor)`."""

# No `from __future__ import annotations`: FastAPI reads the route annotations at runtime.

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from histodetect import __version__
from histodetect.inference.predictor import Predictor
from histodetect.serve.batching import MicroBatcher
from histodetect.serve.context import ServerContext
from histodetect.serve.http_errors import ApiError, install_error_handlers
from histodetect.serve.jobs import SlideJobs, check_slide
from histodetect.serve.limits import LimitsMiddleware, ServeLimits
from histodetect.serve.schemas import (
    ErrorResponse,
    ExplainResponse,
    Health,
    JobAccepted,
    JobStatus,
    ModelResponse,
    PredictResponse,
    SlideList,
)
from histodetect.serve.uploads import (
    Upload,
    client_name,
    decode_patches,
    list_slides,
    read_patch_form,
    resolve_slide_name,
    safe_stem,
    slide_suffix,
)

STATIC_DIR = Path(__file__).with_name("static")
PAGE_HEADERS = {
    # Everything the page uses comes from this server: no CDN, no inline scripts.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (413, "too large: body, files per request or pixels"),
        (415, "not a PNG, JPEG or TIFF image (by content)"),
        (422, "undecodable file, wrong size, or a bad field; names the file"),
        (503, "busy: the queue is full; retry after Retry-After seconds"),
    )
}

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "no such job"}
}

router = APIRouter()


def create_app(
    predictor: Predictor,
    limits: ServeLimits | None = None,
    *,
    slides_dir: Path | None = None,
    jobs_dir: Path | None = None,
) -> FastAPI:
    """The API and page over one loaded model.

    Args:
        predictor: the model; every forward pass goes through one micro-batching worker.
        limits: request limits and batching settings (defaults: `ServeLimits()`).
        slides_dir: folder whose slides requests may name; None allows uploads only.
        jobs_dir: where slide jobs write their results; None uses a temporary folder that
            is deleted when the server stops.
    """
    limits = limits or ServeLimits()
    batcher = MicroBatcher(
        predictor.predict_pixels,
        max_batch=limits.max_batch,
        max_wait_s=limits.max_wait_ms / 1000,
        max_queue=limits.max_queue,
        enabled=limits.batching,
    )
    own_jobs_dir = jobs_dir is None
    jobs_root = Path(tempfile.mkdtemp(prefix="histodetect-jobs-")) if jobs_dir is None else jobs_dir
    jobs = SlideJobs(predictor, batcher, jobs_root, limits.max_jobs)
    context = ServerContext(predictor, batcher, jobs, limits, slides_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        jobs.close()
        batcher.close()
        if own_jobs_dir:
            shutil.rmtree(jobs_root, ignore_errors=True)

    app = FastAPI(
        title="histodetect",
        version=__version__,
        description="Tumour probabilities of H&E lymph-node patches, Grad-CAM explanations and "
        "whole-slide heatmaps. Not a medical device.",
        lifespan=lifespan,
    )
    app.state.context = context
    install_error_handlers(app)
    app.add_middleware(LimitsMiddleware, limits=limits, slide_jobs_full=context.jobs.full)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


async def get_context(request: Request) -> ServerContext:
    """The server's shared state (a FastAPI dependency)."""
    context: ServerContext = request.app.state.context
    return context


Context = Annotated[ServerContext, Depends(get_context)]


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The browser page."""
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


@router.get("/health", response_model=Health)
async def health(context: Context) -> Health:
    """Whether the server takes requests, and its queue."""
    stats = context.batcher.stats
    return Health(
        status="ok",
        queued_patches=context.batcher.queued_patches,
        forward_passes=stats.forward_passes,
        patches_scored=stats.patches,
        batching=context.limits.batching,
    )


@router.get("/v1/model", response_model=ModelResponse)
async def model(context: Context) -> ModelResponse:
    """The ModelSpec, the model card, the threshold and the resolution (µm/px)."""
    return context.model_response()


PREDICT_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "patch images (PNG, JPEG, TIFF)",
                        },
                        "resize": {
                            "type": "boolean",
                            "default": False,
                            "description": "bicubic-resize other sizes",
                        },
                        "center_crop": {
                            "type": "boolean",
                            "default": False,
                            "description": "take the centre of larger images",
                        },
                    },
                }
            }
        },
    }
}
"""The form of POST /v1/predict for the OpenAPI (/docs): the route reads it itself."""


@router.post(
    "/v1/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=PREDICT_FORM
)
async def predict(request: Request) -> JSONResponse:
    """Calibrated tumour probabilities of patch images, equal to `histodetect predict`'s."""
    # The busiest route reads its form and writes its JSON itself: FastAPI's form
    # dependencies and response validation cost about a fifth of its CPU per request.
    context: ServerContext = request.app.state.context
    size = context.predictor.spec.patch_size_px
    with context.batcher.arriving():  # concurrent requests wait for this one, not in vain
        uploads, resize, center_crop = await read_patch_form(request, context.limits)
        async with context.decoding:
            ids, pixels = await run_in_threadpool(
                decode_patches, uploads, size, context.limits, resize, center_crop
            )
        future = context.batcher.submit(pixels)
    probabilities = await asyncio.wrap_future(future)
    return JSONResponse(context.predict_body(ids, probabilities))


@router.post("/v1/explain", response_model=ExplainResponse, responses=ERRORS)
async def explain(
    request: Request,
    context: Context,
    file: Annotated[UploadFile, File(description="one patch image")],
) -> ExplainResponse:
    """Probability and Grad-CAM overlay (PNG) of one patch."""
    form = await request.form()  # the form FastAPI parsed: a second file was dropped unsaid
    unknown = sorted(set(form.keys()) - {"file"})
    if unknown:
        raise ApiError(422, f"the form field {unknown[0]!r} is not 'file', the one field here.")
    if len(form.getlist("file")) > 1:
        raise ApiError(
            422,
            "/v1/explain takes one patch per request; send one 'file' (/v1/predict takes many).",
        )
    upload = Upload(file.filename or "", await file.read())
    size = context.predictor.spec.patch_size_px
    async with context.decoding:
        ids, pixels = await run_in_threadpool(decode_patches, [upload], size, context.limits)
    return await context.batcher.run(lambda: context.explain(ids[0], pixels))


@router.get("/v1/slides", response_model=SlideList)
async def slides(context: Context) -> SlideList:
    """Slides inside the server's --slides-dir that POST /v1/slides may name."""
    if context.slides_dir is None:
        return SlideList(slides=[])
    return SlideList(slides=await run_in_threadpool(list_slides, context.slides_dir))


@router.post("/v1/slides", response_model=JobAccepted, status_code=202, responses=ERRORS)
async def submit_slide(
    context: Context,
    file: Annotated[UploadFile | None, File(description="a slide to upload")] = None,
    name: Annotated[str | None, Form(description="or a slide inside --slides-dir")] = None,
    mpp: Annotated[float | None, Form(description="µm per level-0 pixel, if not recorded")] = None,
    stride_px: Annotated[int, Form(description="cell side in model pixels")] = 32,
) -> JobAccepted:
    """Start analysing a slide (heatmap, regions, summary); poll the job it returns."""
    from histodetect.slides.runner import SlideOptions

    options = SlideOptions(stride_px=stride_px, mpp=mpp, progress=False)
    if (file is None) == (name is None):
        raise ApiError(422, "send either a slide file (field 'file') or a slide name ('name').")
    slide_name = client_name(file.filename) if file is not None else str(name)
    slide = None if file is not None else _named_slide(context, str(name))
    job = context.jobs.create(slide_name)
    try:
        if file is not None:
            slide = await run_in_threadpool(_save_upload, file, slide_name, job.folder)
        assert slide is not None
        spec = context.predictor.spec
        await run_in_threadpool(check_slide, slide, slide_name, spec, options)
    except BaseException:
        context.jobs.discard(job)
        raise
    context.jobs.start(job, slide, options, uploaded=file is not None)
    return JobAccepted(id=job.id, url=f"/v1/jobs/{job.id}")


def _named_slide(context: ServerContext, name: str) -> Path:
    if context.slides_dir is None:
        raise ApiError(422, "this server has no --slides-dir; upload the slide instead.", name)
    return resolve_slide_name(context.slides_dir, name)


def _save_upload(file: UploadFile, name: str, folder: Path) -> Path:
    """Copy an uploaded slide into the job's folder under a safe name and a sniffed suffix."""
    file.file.seek(0)
    suffix = slide_suffix(file.file.read(16), name)
    file.file.seek(0)
    path = folder / "upload" / f"{safe_stem(name)}{suffix}"
    path.parent.mkdir()
    with path.open("wb") as out:
        shutil.copyfileobj(file.file, out, 1 << 20)
    return path


@router.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=NOT_FOUND)
async def job_status(context: Context, job_id: str) -> JobStatus:
    """Progress of a slide job and, when done, links to its outputs."""
    return context.job_status(context.jobs.get(job_id))


@router.get("/v1/jobs/{job_id}/files/{link}", responses=NOT_FOUND)
async def job_file(context: Context, job_id: str, link: str) -> FileResponse:
    """One output of a finished slide job (heatmap, overlay, mask, regions, summary, ...)."""
    path = context.jobs.output(job_id, link)
    return FileResponse(
        path, filename=path.name, content_disposition_type="inline",
        headers={"X-Content-Type-Options": "nosniff"},
    )  # fmt: skip
