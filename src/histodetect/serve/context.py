"""What the routes share: the loaded Predictor, the batcher, slide jobs and limits, and the
small translations from their results into response bodies."""

from __future__ import annotations

import asyncio
import base64
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histodetect.errors import HistodetectError
from histodetect.inference.predictor import Predictor
from histodetect.serve.batching import MicroBatcher
from histodetect.serve.http_errors import ApiError, api_wording
from histodetect.serve.jobs import SlideJobs
from histodetect.serve.limits import ServeLimits
from histodetect.serve.schemas import (
    ExplainResponse,
    JobStatus,
    ModelBrief,
    ModelResponse,
    Prediction,
)
from histodetect.serve.slide_job import SlideJob


@dataclass
class ServerContext:
    """Everything a request may use, built once by `create_app`.

    Attributes:
        predictor: the loaded model (only the batcher's worker thread runs it).
        batcher: the queue of forward passes.
        jobs: slide jobs.
        limits: what requests may ask for.
        slides_dir: the folder slide names refer to; None when slides must be uploaded.
        decoding: held while a request's uploads are decoded (bounds memory).
    """

    predictor: Predictor
    batcher: MicroBatcher
    jobs: SlideJobs
    limits: ServeLimits
    slides_dir: Path | None = None
    decoding: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        """At most `limits.max_decoding` requests hold decoded pixels at once."""
        self.decoding = asyncio.Semaphore(self.limits.max_decoding)

    @property
    def brief(self) -> ModelBrief:
        """The model as named in every answer."""
        spec = self.predictor.spec
        return ModelBrief(
            name=spec.model_name,
            file=Path(os.fspath(self.predictor.model_path)).name,
            threshold=spec.threshold,
            temperature=spec.temperature,
            tta=bool(getattr(self.predictor, "tta", False)),
        )

    def predict_body(self, ids: list[str], probabilities: np.ndarray) -> dict[str, Any]:
        """The JSON of a `PredictResponse`: the predictions and the model brief."""
        return {"predictions": self.prediction_rows(ids, probabilities),
                "model": self.brief.model_dump()}  # fmt: skip

    def prediction_rows(self, ids: list[str], probabilities: np.ndarray) -> list[dict[str, Any]]:
        """One `Prediction` as plain JSON per id: the probability and the class at the spec's
        threshold (POST /v1/predict answers with these directly, without pydantic's round trip)."""
        spec = self.predictor.spec
        names = spec.class_names
        return [
            {"id": patch_id, "probability": p, "class": int(p >= spec.threshold),
             "class_name": names[int(p >= spec.threshold)]}
            for patch_id, p in zip(ids, probabilities.tolist(), strict=True)
        ]  # fmt: skip

    def predictions(self, ids: list[str], probabilities: np.ndarray) -> list[Prediction]:
        """`prediction_rows` as pydantic models."""
        return [Prediction.model_validate(row) for row in self.prediction_rows(ids, probabilities)]

    def model_response(self) -> ModelResponse:
        """The ModelSpec, the model card and the resolution the model works at."""
        from histodetect.slides.analysis import model_mpp

        spec = self.predictor.spec
        return ModelResponse(
            model=self.brief,
            spec=spec.to_dict(),
            model_card=dict(self.predictor.metadata),
            mpp=model_mpp(spec),
            patch_size_px=spec.patch_size_px,
            device=self.predictor.device_name,
        )

    def explain(self, patch_id: str, pixels: np.ndarray) -> ExplainResponse:
        """Probability and Grad-CAM overlay of one uint8 (1, S, S, 3) patch.

        Runs on the batcher's worker thread (Grad-CAM hooks into the model's layers, so no
        other forward pass may run meanwhile).
        """
        try:
            model = self.predictor.model  # an ONNX model has none (and may run without torch)
            from histodetect.explain.gradcam import require_captum

            require_captum()
        except HistodetectError as exc:
            path = os.fspath(self.predictor.model_path)
            reason = api_wording(str(exc).replace(path, Path(path).name))  # no server paths
            raise ApiError(501, f"this server cannot explain: {reason}") from None
        from histodetect.explain.gradcam import gradcam_overlays

        probability = self.predictor.predict_pixels(pixels)
        overlay = gradcam_overlays(model, self.predictor.spec, pixels, probability)[0]
        return ExplainResponse(
            prediction=self.predictions([patch_id], probability)[0],
            patch_png=png_data_uri(pixels[0]),
            overlay_png=png_data_uri(overlay),
            model=self.brief,
        )

    @staticmethod
    def job_status(job: SlideJob) -> JobStatus:
        """A job as clients see it, with links to its outputs once done."""
        from histodetect.serve.slide_job import OUTPUT_FILES

        links = {}
        if job.status == "done":
            links = {link: f"/v1/jobs/{job.id}/files/{link}" for link in OUTPUT_FILES}
        return JobStatus(
            id=job.id,
            slide=job.slide,
            status=job.status,
            stage=job.stage,
            progress=round(job.progress, 4),
            tiles_scored=job.tiles_scored,
            tiles_total=job.tiles_total,
            error=job.error,
            links=links,
            summary=job.summary,
        )


def png_data_uri(pixels: np.ndarray) -> str:
    """A `data:image/png;base64,...` URI of uint8 (h, w, 3) pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
