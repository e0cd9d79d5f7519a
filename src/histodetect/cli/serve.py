"""`histodetect serve`: the HTTP API (OpenAPI at /docs) and the browser page, on one model."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histodetect.cli import options

if TYPE_CHECKING:
    from histodetect.serve.limits import ServeLimits

HELP = "HTTP API and browser page: patch predictions, Grad-CAM and slide heatmaps (serve extra)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=options.path_value,
        help="model.pt, model.onnx or run folder (default, or `bundled`: the bundled model)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
        "machine only; 0.0.0.0 opens it to the network)",
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free one")
    parser.add_argument(
        "--max-upload-mb", type=float, default=32.0, help="largest patch request (default 32)"
    )
    parser.add_argument(
        "--max-images", type=int, default=256, help="most patch files per request (default 256)"
    )
    parser.add_argument(
        "--max-slide-mb", type=float, default=4096.0, help="largest slide upload (default 4096)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=256,
        help="most patches of concurrent requests joined into one forward pass (default 256)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a forward pass waits for requests still uploading or decoding "
        "(default 5; a lone request does not wait)",
    )
    parser.add_argument(
        "--no-batching",
        dest="batching",
        action="store_false",
        help="one forward pass per request (for comparisons)",
    )
    parser.add_argument(
        "--slides-dir",
        type=options.path_value,
        help="folder of slides that requests may name (else uploads only)",
    )
    parser.add_argument(
        "--jobs-dir",
        type=options.path_value,
        help="folder for slide results, kept across restarts (default: a temporary folder deleted on "
        "exit); one server per folder",
    )
    options.add_inference(parser)


def run(args: argparse.Namespace) -> int:
    from histodetect.serve.server import require_serve_extra

    require_serve_extra()
    from histodetect.serve.server import bind_socket

    limits = _checked_limits(args)
    with _jobs_dir_lock(args.jobs_dir):
        return _serve(args, limits, bind_socket(args.host, args.port))


JOBS_DIR_LOCK = ".histodetect-serve.lock"
"""The lock file a server holds inside its --jobs-dir (inside, not beside it: a service user
may own its jobs folder and nothing around it)."""


@contextlib.contextmanager
def _jobs_dir_lock(jobs_dir: Path | None) -> Iterator[None]:
    """Hold --jobs-dir for this server alone: a second server on it took over the first's
    running jobs as stopped ones and deleted their uploads under them."""
    import fcntl
    import os

    from histodetect.errors import HistodetectError

    if jobs_dir is None:
        yield
        return
    fd = os.open(jobs_dir / JOBS_DIR_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HistodetectError(
                f"--jobs-dir {jobs_dir} is in use by another histodetect serve; give each "
                "server its own --jobs-dir, or stop the other one first."
            ) from None
        yield  # the file stays: removing a lock file lets a third process lock a new one
    finally:
        os.close(fd)


def _serve(args: argparse.Namespace, limits: ServeLimits, sock: Any) -> int:
    """Load the model, then answer on `sock` until stopped."""
    from histodetect.inference.predictor import Predictor
    from histodetect.serve.app import create_app
    from histodetect.serve.server import run_server, url_of

    try:  # a busy port failed before the model loads
        predictor = Predictor(
            args.model,
            tta=args.tta,
            device=args.device,
            batch_size=args.batch_size,
            precision=args.precision,
        )
        app = create_app(predictor, limits, slides_dir=args.slides_dir, jobs_dir=args.jobs_dir)
    except BaseException:
        sock.close()
        raise
    spec = predictor.spec
    print(
        f"Model: {predictor.model_path.name} ({spec.model_name}, threshold {spec.threshold:.3f}"
        f"{', TTA x8' if args.tta else ''}) on {predictor.description}; micro-batching "
        f"{'up to ' + str(limits.max_batch) + ' patches' if limits.batching else 'off'}."
    )
    print(f"Serving on {url_of(sock)} (API docs at {url_of(sock)}docs); Ctrl-C stops.", flush=True)
    run_server(app, sock)
    app.state.context.jobs.join()  # a slide job still writing keeps --jobs-dir locked
    print("Stopped.")
    return 0


def _checked_limits(args: argparse.Namespace) -> ServeLimits:
    """The limits from the options, after refusing options that cannot work."""
    from histodetect.errors import HistodetectError
    from histodetect.modelfiles import resolve_model_path
    from histodetect.serve.limits import ServeLimits

    limits = ServeLimits(
        max_upload_mb=args.max_upload_mb, max_images=args.max_images,
        max_slide_mb=args.max_slide_mb, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, max_queue=max(2048, 4 * args.max_images),
        batching=args.batching,
    )  # fmt: skip
    if args.slides_dir is not None and not args.slides_dir.is_dir():
        raise HistodetectError(f"--slides-dir {args.slides_dir} is not a folder.")
    if args.model is not None and resolve_model_path(args.model).suffix == ".ckpt":
        raise HistodetectError(
            f"--model {args.model} is a training checkpoint, which may hold pickled code; serve "
            "loads exported weights only: give the run's model.pt."
        )
    if args.jobs_dir is not None:
        from histodetect.data.store import check_not_in_store

        if args.jobs_dir.exists() and not args.jobs_dir.is_dir():
            raise HistodetectError(f"--jobs-dir {args.jobs_dir} is a file; give a folder.")
        check_not_in_store(args.jobs_dir, "slide job results", "--jobs-dir")
        args.jobs_dir.mkdir(parents=True, exist_ok=True)
    return limits
