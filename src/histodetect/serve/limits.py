"""The server's limits, and the ASGI middleware that enforces the ones on whole requests.

Request bodies are limited before they are parsed (Content-Length, then bytes counted as they
arrive), and at most `max_inflight` uploads are handled at once, so memory and temporary disk
stay bounded however many clients send; the rest is refused with 413 or 503 + Retry-After.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from histodetect.errors import HistodetectError

MB = 1 << 20
MAX_BODY_MB = 1 << 20
"""Largest --max-upload-mb / --max-slide-mb: 1 TiB, far above any slide (catches inf and typos)."""
MAX_WAIT_MS = 10_000.0
"""Longest --max-wait-ms: a batch that waits longer for company than 10 s helps no one."""
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SLIDE_ROUTE = "/v1/slides"
RETRY_AFTER_S = 1
"""Seconds a refused client is told to wait (Retry-After) before trying again."""


@dataclass(frozen=True)
class ServeLimits:
    """What one request, and the server as a whole, may ask for.

    Attributes:
        max_upload_mb: largest request body of patch routes, MiB.
        max_images: most patch files in one request.
        max_image_pixels: most pixels (width x height) of one patch file, checked from its
            header before it is decoded (decompression bombs).
        max_request_pixels: most pixels of all files of one request together.
        max_decoding: requests decoded at once (each holds up to `max_request_pixels` x 3
            bytes while it is decoded).
        max_slide_mb: largest slide upload, MiB.
        max_batch: most patches in one shared forward pass.
        max_wait_ms: how long a forward pass waits for more requests, ms.
        max_queue: most patches waiting for the model before requests get 503.
        max_inflight: most uploads handled at once before requests get 503.
        max_jobs: most slide jobs queued or running before new ones get 503.
        batching: join concurrent requests into shared forward passes.
    """

    max_upload_mb: float = 32.0
    max_images: int = 256
    max_image_pixels: int = 2048 * 2048
    max_request_pixels: int = 32 << 20
    max_decoding: int = 4
    max_slide_mb: float = 4096.0
    max_batch: int = 256
    max_wait_ms: float = 5.0
    max_queue: int = 2048
    max_inflight: int = 64
    max_jobs: int = 4
    batching: bool = True

    def __post_init__(self) -> None:
        """Refuse limits that cannot work, naming the option."""
        for option, value in (("--max-upload-mb", self.max_upload_mb),
                              ("--max-slide-mb", self.max_slide_mb)):  # fmt: skip
            if not 0 < value <= MAX_BODY_MB:  # also NaN and inf, which int() cannot take
                raise HistodetectError(
                    f"{option} must be a positive number of MB up to {MAX_BODY_MB:,}, got {value}."
                )
        for option, number in (("--max-images", self.max_images), ("--max-batch", self.max_batch),
                               ("max_image_pixels", self.max_image_pixels),
                               ("max_request_pixels", self.max_request_pixels),
                               ("max_decoding", self.max_decoding),
                               ("max_inflight", self.max_inflight), ("max_jobs", self.max_jobs)):  # fmt: skip
            if number < 1:
                raise HistodetectError(f"{option} must be at least 1, got {number}.")
        if not 0 <= self.max_wait_ms <= MAX_WAIT_MS:  # inf killed the batcher (wait(inf))
            raise HistodetectError(
                f"--max-wait-ms must lie in 0..{MAX_WAIT_MS:,}, got {self.max_wait_ms}."
            )
        if self.max_queue < self.max_images:
            raise HistodetectError(
                f"the queue ({self.max_queue} patches) must hold at least one full request "
                f"(--max-images {self.max_images})."
            )

    def body_limit_bytes(self, path: str) -> int:
        """Largest request body accepted on `path`."""
        mb = self.max_slide_mb if path == SLIDE_ROUTE else self.max_upload_mb
        return int(mb * MB)


class _BodyTooLargeError(Exception):
    """Raised from `receive` to stop parsing a body that went past its limit."""


class LimitsMiddleware:
    """ASGI middleware: 413 for bodies over the limit, 503 + Retry-After when too many uploads
    are in flight. Only requests with a body (POST, PUT, PATCH) are counted."""

    def __init__(
        self, app: ASGIApp, limits: ServeLimits, slide_jobs_full: Callable[[], bool] | None = None
    ) -> None:
        self.app = app
        self.limits = limits
        self.inflight = 0
        self.slide_jobs_full = slide_jobs_full

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.limits.body_limit_bytes(scope["path"])
        if _content_length(scope) > limit:
            await send_json(send, 413, _too_large(limit))
            return
        if self.inflight >= self.limits.max_inflight:
            busy = f"the server is handling {self.inflight} uploads; retry in a moment."
            await send_json(send, 503, {"error": busy}, retry_after=True)
            return
        if (
            scope["path"] == SLIDE_ROUTE
            and self.slide_jobs_full is not None
            and self.slide_jobs_full()
        ):
            # before the body is read: a slide of up to --max-slide-mb was spooled to disk
            # (and copied again) only for the route to answer that no job could take it
            busy = f"all {self.limits.max_jobs} slide jobs are waiting or running; retry later."
            await send_json(send, 503, {"error": busy}, retry_after=True)
            return
        self.inflight += 1
        try:
            await self._guarded(scope, receive, send, limit)
        finally:
            self.inflight -= 1

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app, counting body bytes; past `limit`, answer 413 instead of the app."""
        state = {"received": 0, "too_large": False, "started": False}

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["too_large"] = True
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            if state["too_large"]:
                return  # the app's answer to the interrupted body is replaced below
            state["started"] = True
            await send(message)

        with contextlib.suppress(_BodyTooLargeError):  # raised by counted_receive
            await self.app(scope, counted_receive, guarded_send)
        if state["too_large"] and not state["started"]:
            await send_json(send, 413, _too_large(limit))


def _content_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _too_large(limit: int) -> dict[str, str]:
    return {
        "error": f"the request is larger than this server's limit of {limit / MB:g} MiB; send "
        "fewer or smaller files (the limit is set by --max-upload-mb or --max-slide-mb)."
    }


async def send_json(
    send: Send, status: int, body: dict[str, Any], retry_after: bool = False
) -> None:
    """Send a whole JSON response from ASGI middleware."""
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if retry_after:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
