"""Every error the API returns is JSON `{"error": one sentence, "file": name or absent}`.

Bad input gets 4xx with a sentence naming the file or field; a full queue 503 with
Retry-After; only a bug in histodetect is a 500, and never with a traceback in the response
(the traceback goes to the server's log).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from histodetect.errors import HistodetectError
from histodetect.serve.batching import QueueFullError
from histodetect.serve.limits import RETRY_AFTER_S

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

LOG = logging.getLogger("histodetect.serve")
_CLI_TO_API = (
    ("--resize", "resize=true"),
    ("--center-crop", "center_crop=true"),
    ("--mpp", "mpp"),
    ("--stride-px", "stride_px"),
)
"""Command-line options named in shared messages, and the API fields that do the same."""


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and one sentence.

    Args:
        status: HTTP status code (413, 415, 422, 404, 503, ...).
        message: one sentence saying what is wrong and what to do.
        file: the uploaded file or slide name the sentence is about, if any.
    """

    def __init__(self, status: int, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.file = file


def error_body(message: str, file: str | None = None) -> dict[str, str]:
    """The JSON body of every error response."""
    return {"error": message} | ({"file": file} if file is not None else {})


def api_wording(message: str) -> str:
    """A message written for the command line, with the API's field names for its options."""
    for option, field in _CLI_TO_API:
        message = message.replace(option, field)
    return message.replace(" (a whole slide goes to `histodetect slide`)", "")


def install_error_handlers(app: FastAPI) -> None:
    """Turn every exception a route can raise into a JSON error response."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HistodetectError, _user_error)
    app.add_exception_handler(QueueFullError, _queue_full)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)


def _json(status: int, body: dict[str, str], headers: dict[str, str] | None = None) -> JSONResponse:
    from fastapi.responses import JSONResponse

    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _json(exc.status, error_body(exc.message, exc.file))


async def _user_error(request: Request, exc: Exception) -> JSONResponse:
    return _json(422, error_body(str(exc)))


async def _queue_full(request: Request, exc: Exception) -> JSONResponse:
    message = f"the model is busy ({exc}); retry in {RETRY_AFTER_S} s."
    return _json(503, error_body(message), {"Retry-After": str(RETRY_AFTER_S)})


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    from fastapi.exceptions import RequestValidationError

    assert isinstance(exc, RequestValidationError)
    return _json(422, error_body(validation_sentence(exc.errors())))


def validation_sentence(errors: Any) -> str:
    """One sentence for FastAPI's list of validation errors (the first one)."""
    if not errors:
        return "the request is not valid."
    first = errors[0]
    where = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    field = ".".join(where) or "the request"
    if first.get("type") == "missing":
        return f"the form field {field!r} is missing (send the files as multipart form data)."
    return f"the field {field!r} is not valid: {first.get('msg', 'wrong value')}."


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    messages = {404: f"there is nothing at {request.url.path}; see /docs for the API.",
                405: f"{request.method} is not allowed on {request.url.path}; see /docs."}  # fmt: skip
    message = messages.get(exc.status_code, str(exc.detail))
    return _json(exc.status_code, error_body(message), dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    LOG.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    message = (
        "internal error (a bug in histodetect; the server's log has the details): "
        f"{type(exc).__name__}."
    )
    return _json(500, error_body(message))
