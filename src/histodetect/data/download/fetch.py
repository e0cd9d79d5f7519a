"""Fetch one file over HTTP(S): stream to NAME.part, resume with Range, retry, verify MD5, rename."""

from __future__ import annotations

import errno
import http.client
import re
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from histodetect import __version__
from histodetect.atomic import output_lock
from histodetect.data.download.checksums import file_md5
from histodetect.errors import HistodetectError

TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
"""HTTP statuses worth another try: timeouts, rate limits and a busy or failing server."""
MAX_WAIT_S = 60.0
PART_SUFFIX = ".part"
BAD_SUFFIX = ".bad-md5"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


@dataclass(frozen=True)
class FetchOptions:
    """How to fetch.

    Attributes:
        retries: further tries after a transient failure (connection dropped or timed out,
            HTTP 408/429/5xx); each try resumes from the bytes already saved.
        retry_wait_s: seconds before the first retry; doubled for each further one, at most
            MAX_WAIT_S (a server's Retry-After is honoured up to the same bound).
        timeout_s: seconds to wait for the connection and for each read.
        progress: show progress bars (bytes, rate, ETA).
        chunk_bytes: bytes read from the connection at a time.
    """

    retries: int = 5
    retry_wait_s: float = 2.0
    timeout_s: float = 60.0
    progress: bool = True
    chunk_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.retries < 0 or self.retry_wait_s < 0:
            raise HistodetectError("--retries and --retry-wait must be 0 or more.")


@dataclass(frozen=True)
class FetchResult:
    """One file fetched: where it is, whether it was `downloaded` or already `present`, its size."""

    path: Path
    status: str
    size_bytes: int


class _TransientError(Exception):
    """A failure worth another try; `wait_s` is the server's Retry-After, when it gave one."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


class _RangeNotSatisfiableError(Exception):
    """HTTP 416 to a Range request: the saved part already holds `total_bytes` (or more)."""

    def __init__(self, total_bytes: int | None) -> None:
        super().__init__(f"range not satisfiable (file size {total_bytes})")
        self.total_bytes = total_bytes


def fetch_file(url: str, dest: Path, md5: str, options: FetchOptions | None = None) -> FetchResult:
    """Make `dest` a verified copy of `url`, whose MD5 must be `md5`.

    A `dest` already present and matching is kept as it is. Otherwise the bytes go to
    `dest.part` (resumed from its size with an HTTP Range request), are verified, and only
    then renamed to `dest`: a verified file is never replaced by anything half-written.

    Raises:
        HistodetectError: a permanent HTTP error (e.g. 404), retries used up, not enough disk
            space, or an MD5 mismatch (the file is moved aside to `dest.bad-md5`).
    """
    options = options or FetchOptions()
    with output_lock(dest):  # two downloads appended to one .part; the MD5 then failed both
        if dest.is_file():
            _verify(dest, dest, md5, options)
            return FetchResult(dest, "present", dest.stat().st_size)
        part = dest.with_name(dest.name + PART_SUFFIX)
        _download_with_retries(url, part, options)
        _verify(part, dest, md5, options)
        part.replace(dest)
        return FetchResult(dest, "downloaded", dest.stat().st_size)


def _verify(path: Path, dest: Path, md5: str, options: FetchOptions) -> None:
    """Raise, after moving `path` aside to `dest.bad-md5`, unless its MD5 is `md5`."""
    actual = file_md5(path, options.progress, label=dest.name)
    if actual == md5.lower():
        return
    aside = dest.with_name(dest.name + BAD_SUFFIX)
    path.replace(aside)
    raise HistodetectError(
        f"{dest.name} does not match its MD5 (expected {md5}, got {actual}); it was moved to "
        f"{aside} - rerun to download it again, or pass --checksums FILE if your mirror serves "
        "other bytes."
    )


def _download_with_retries(url: str, part: Path, options: FetchOptions) -> None:
    for attempt in range(options.retries + 1):
        try:
            _download_once(url, part, options)
            return
        except _TransientError as exc:
            if attempt == options.retries:
                raise HistodetectError(_gave_up(url, part, attempt + 1, str(exc))) from exc
            time.sleep(_wait_s(attempt, options, exc.wait_s))


def _wait_s(attempt: int, options: FetchOptions, server_wait_s: float | None) -> float:
    backoff = options.retry_wait_s * 2**attempt
    return min(max(backoff, server_wait_s or 0.0), MAX_WAIT_S)


def _gave_up(url: str, part: Path, tries: int, reason: str) -> str:
    saved = part.stat().st_size if part.is_file() else 0
    resume = (
        f"; rerun to resume from the {format_size(saved)} saved in {part}"
        if saved
        else "; rerun later"
    )
    return f"could not download {url} after {tries} tries ({reason}){resume}."


def _download_once(url: str, part: Path, options: FetchOptions) -> None:
    """One request: append to `part` from its size; return when the server's bytes are all there."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, offset, options)
    except _RangeNotSatisfiableError as exc:
        if exc.total_bytes == offset:
            return  # the part is complete (a previous run stopped before verifying it)
        part.unlink()
        raise _TransientError("the saved part did not fit the file on the server", 0.0) from exc
    with response:
        start, total = _start_and_total(response, offset)
        if start not in (0, offset):  # an odd server: start again from the first byte
            part.unlink()
            raise _TransientError(f"the server resumed at byte {start}, not {offset}", 0.0)
        _check_free_space(part, start, total)
        received = _save(response, part, start, total, options)
    if total is not None and start + received < total:
        raise _TransientError(
            f"connection dropped after {format_size(start + received)} of {format_size(total)}"
        )


def _open(url: str, offset: int, options: FetchOptions) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"histodetect/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=options.timeout_s
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            size = re.search(r"/(\d+)$", exc.headers.get("Content-Range", ""))
            exc.close()
            raise _RangeNotSatisfiableError(int(size.group(1)) if size else None) from exc
        reason = f"the server answered HTTP {exc.code} {exc.reason}"
        exc.close()
        if exc.code in TRANSIENT_HTTP:
            raise _TransientError(reason, _retry_after_s(exc.headers.get("Retry-After"))) from exc
        raise HistodetectError(
            f"{url}: {reason}; check --url (files are fetched as URL/<file name>)."
        ) from exc
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, DNS
        raise _TransientError(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from exc
    return response


def _retry_after_s(value: str | None) -> float | None:
    return float(value) if value and value.strip().isdigit() else None


def _start_and_total(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """(byte the body starts at; whole file size in bytes, when the server says it)."""
    m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if response.status == 206 and m:
        return int(m.group(1)), int(m.group(2)) if m.group(2) != "*" else None
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None  # whole file from byte 0


def _check_free_space(part: Path, start: int, total: int | None) -> None:
    if total is None:
        return
    need, free = total - start, free_bytes(part.parent)
    if need > free:
        raise HistodetectError(
            f"not enough disk space in {part.parent} for {part.name.removesuffix(PART_SUFFIX)}: "
            f"it needs {format_size(need)} more and {format_size(free)} are free; free some space or choose "
            "another --out."
        )


def free_bytes(folder: Path) -> int:
    """Bytes free on the file system holding `folder`."""
    return shutil.disk_usage(folder).free


def _save(
    response: http.client.HTTPResponse,
    part: Path,
    start: int,
    total: int | None,
    options: FetchOptions,
) -> int:
    """Append (or, from byte 0, write) the body to `part`; return the bytes received."""
    received = 0
    name = part.name.removesuffix(PART_SUFFIX)
    try:
        with (
            part.open("ab" if start else "wb") as f,
            tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=name, disable=not options.progress,
            ) as bar,
        ):  # fmt: skip
            while chunk := _read(response, options.chunk_bytes):
                write_chunk(f, chunk)
                received += len(chunk)
                bar.update(len(chunk))
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise HistodetectError(
            f"the disk holding {part.parent} is full after {format_size(start + received)} of {name}; "
            f"free some space and rerun to resume from {part.name}."
        ) from exc
    return received


def _read(response: http.client.HTTPResponse, n: int) -> bytes:
    try:
        return response.read(n)
    except (OSError, http.client.HTTPException) as exc:
        raise _TransientError(f"connection lost: {type(exc).__name__}: {exc}") from exc


def write_chunk(f: BinaryIO, chunk: bytes) -> None:
    """The one place downloaded bytes reach the disk (tests simulate a full disk here)."""
    f.write(chunk)


def format_size(n_bytes: int) -> str:
    """`n_bytes` for people: kB, MB or GB (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes / 1e3:,.1f} kB"
