"""Request and response bodies of the API (pydantic models; they make the OpenAPI at /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelBrief(BaseModel):
    """The model that answered: enough to reproduce the numbers with `histodetect predict`."""

    name: str = Field(description="registry name of the model family, e.g. histonet_s")
    file: str = Field(description="model file name (not its path on the server)")
    threshold: float = Field(description="calibrated decision threshold on the probability")
    temperature: float = Field(description="logits are divided by it before the sigmoid")
    tta: bool = Field(description="probabilities averaged over the 8 flips/rotations")


class Prediction(BaseModel):
    """One patch: its calibrated tumour probability and the class at the model's threshold."""

    id: str = Field(description="file name without extension, as in `histodetect predict`")
    probability: float = Field(description="calibrated tumour probability in [0, 1]")
    class_: int = Field(alias="class", description="1 when probability >= threshold, else 0")
    class_name: str = Field(description="name of the class, e.g. normal or tumour")


class PredictResponse(BaseModel):
    """Answer of POST /v1/predict: one prediction per file, in the order sent."""

    predictions: list[Prediction]
    model: ModelBrief


class ExplainResponse(BaseModel):
    """Answer of POST /v1/explain: the prediction and its Grad-CAM overlay."""

    prediction: Prediction
    patch_png: str = Field(description="the patch as decoded, a data: URI of a PNG")
    overlay_png: str = Field(
        description="Grad-CAM heat over the patch (bright = drove the predicted class), a "
        "data: URI of a PNG of the same size"
    )
    model: ModelBrief


class ModelResponse(BaseModel):
    """Answer of GET /v1/model: the ModelSpec, the model card (training metadata) and more."""

    model: ModelBrief
    spec: dict[str, Any] = Field(description="the ModelSpec stored in the model file")
    model_card: dict[str, Any] = Field(
        description="metadata stored with the weights: data, splits, validation metrics, "
        "calibration"
    )
    mpp: float = Field(description="microns per pixel the model was trained at")
    patch_size_px: int
    device: str


class Health(BaseModel):
    """Answer of GET /health."""

    status: str = Field(description="'ok' while the server takes requests")
    queued_patches: int = Field(description="patches waiting for the model")
    forward_passes: int = Field(description="forward passes since start")
    patches_scored: int = Field(description="patches scored since start")
    batching: bool = Field(description="concurrent requests share forward passes")


class JobAccepted(BaseModel):
    """Answer of POST /v1/slides: where to poll."""

    id: str
    url: str = Field(description="GET it for progress and, when done, the outputs")


class JobStatus(BaseModel):
    """Answer of GET /v1/jobs/{id}."""

    id: str
    slide: str = Field(description="the slide as it was named in the request")
    status: str = Field(description="queued, running, done or failed")
    stage: str = Field(description="queued, masking, scoring, writing, done or failed")
    progress: float = Field(description="fraction of the tissue tiles scored, 0 to 1")
    tiles_scored: int
    tiles_total: int | None = Field(description="tissue tiles to score; known after masking")
    error: str | None = Field(description="why the job failed, one sentence")
    links: dict[str, str] = Field(
        description="when done: heatmap, overlay, mask, regions (GeoJSON), summary, report, tiles"
    )
    summary: dict[str, Any] | None = Field(description="summary.json figures when done")


class SlideList(BaseModel):
    """Answer of GET /v1/slides: the slides a request may name."""

    slides: list[str] = Field(description="names relative to the server's --slides-dir")


class ErrorResponse(BaseModel):
    """Every error: one sentence, and the file it is about when there is one."""

    error: str
    file: str | None = None
