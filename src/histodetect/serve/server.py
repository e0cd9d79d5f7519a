"""Running the application: the listening socket (bound before the URL is printed, so a busy
port is one sentence) and uvicorn on it until Ctrl-C."""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

from histodetect.errors import HistodetectError
from histodetect.serve import INSTALL_HINT

if TYPE_CHECKING:
    from fastapi import FastAPI


def require_serve_extra() -> None:
    """Raise one sentence naming the extra when FastAPI, uvicorn or python-multipart is missing."""
    import importlib.util

    missing = [
        m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise HistodetectError(f"histodetect serve needs {', '.join(missing)}: {INSTALL_HINT}.")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 picks a free one).

    Raises:
        HistodetectError: the port is taken, not allowed, or the host is not an address here.
    """
    if not 0 <= port <= 65535:
        raise HistodetectError(f"--port must lie in 0..65535, got {port}.")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise HistodetectError(
            f"--host {host} is not a host name or address ({exc.strerror})."
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise HistodetectError(
                f"port {port} on {host} is in use; choose another --port (0 picks a free one)."
            ) from None
        raise HistodetectError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); check --host and --port."
        ) from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The http:// address clients use for a bound socket."""
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def run_server(app: FastAPI, sock: socket.socket) -> None:
    """Serve `app` on `sock` until interrupted (Ctrl-C or SIGTERM stop it gracefully)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn has shut down already; the signal is re-raised after it
    finally:
        sock.close()
