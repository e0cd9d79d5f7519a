"""`histodetect download pcam` against a loopback HTTP server: resume, retries, checksums, disk."""

from __future__ import annotations

import errno
import hashlib
import http.server
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from histodetect.cli.main import main
from histodetect.data.download import fetch
from histodetect.data.download.checksums import PCAM_MD5, read_checksums
from histodetect.data.download.pcam import pcam_file_names
from histodetect.errors import HistodetectError
from imagefiles import holding_lock_elsewhere, make_pcam

SIZES = {"train": 6, "valid": 4, "test": 4}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files`; `server.faults[name]` is "404", "500" or "drop" (once, half-way)."""

    server: _Server

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        self.server.requests.append((name, rng))
        fault = self.server.faults.get(name)
        if name not in self.server.files or fault == "404":
            self.send_error(404, "Not Found")
            return
        if fault == "500":
            self.send_error(500, "Internal Server Error")
            return
        body = self.server.files[name]
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
        if start >= len(body) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if fault == "drop":  # send half, then hang up; the next request is served in full
            del self.server.faults[name]
            self.wfile.write(body[start : len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, bytes]
    faults: dict[str, str]
    requests: list[tuple[str, str | None]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def gets(self, name: str) -> list[str | None]:
        """The Range header of each request for `name` (None: no Range)."""
        return [rng for n, rng in self.requests if n == name]


@pytest.fixture(scope="module")
def pcam_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Gzipped PCam-style x/y .h5 files and meta CSVs, as bytes by file name."""
    folder = tmp_path_factory.mktemp("pcam-src")
    make_pcam(folder, np.random.default_rng(7), SIZES, gz=True)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def server(pcam_files: dict[str, bytes]) -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.faults, srv.requests = dict(pcam_files), {}, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture
def sums(tmp_path: Path, pcam_files: dict[str, bytes]) -> Path:
    """The test files' MD5s in md5sum format (the test files are not the real PCam)."""
    path = tmp_path / "md5sums.txt"
    lines = [f"{hashlib.md5(b).hexdigest()}  {n}" for n, b in sorted(pcam_files.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _download(server: _Server, out: Path, sums: Path, *extra: str) -> int:
    argv = ["download", "pcam", "--out", str(out), "--url", server.url]
    argv += ["--checksums", str(sums), "--retry-wait", "0", "--no-progress", *extra]
    return main(argv)


def _verified_or_absent(out: Path, sums: Path) -> None:
    """Every file under a final PCam name is the verified one: nothing half-written took its place."""
    table = read_checksums(sums)
    for name, md5 in table.items():
        if (out / name).exists():
            assert hashlib.md5((out / name).read_bytes()).hexdigest() == md5, name


def test_clean_download_then_store_then_skip(
    server: _Server, sums: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, store = tmp_path / "pcam", tmp_path / "store"
    assert _download(server, out, sums, "--store", str(store)) == 0
    printed = capsys.readouterr().out
    assert printed.count(": downloaded,") == 9 and f"Store written to {store}" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(pcam_file_names(list(SIZES)))
    _verified_or_absent(out, sums)
    for split, n in SIZES.items():
        assert f"{split}: {n} patches ({n // 2} tumour, {n - n // 2} normal" in printed
    n_requests = len(server.requests)
    assert _download(server, out, sums) == 0  # a second run re-verifies and fetches nothing
    assert capsys.readouterr().out.count(": present,") == 9
    assert len(server.requests) == n_requests


def test_dropped_connection_resumes_with_a_range_request(
    server: _Server, sums: Path, tmp_path: Path
) -> None:
    name = "camelyonpatch_level_2_split_valid_x.h5.gz"
    server.faults[name] = "drop"
    assert _download(server, tmp_path / "pcam", sums, "--splits", "valid") == 0
    half = len(server.files[name]) // 2
    assert server.gets(name) == [None, f"bytes={half}-"]
    assert (tmp_path / "pcam" / name).read_bytes() == server.files[name]
    assert not list((tmp_path / "pcam").glob("*.part"))


def test_a_complete_part_left_by_an_earlier_run_is_verified_not_fetched_again(
    server: _Server, sums: Path, tmp_path: Path
) -> None:
    name = "camelyonpatch_level_2_split_test_y.h5.gz"
    out = tmp_path / "pcam"
    out.mkdir()
    (out / f"{name}.part").write_bytes(server.files[name])
    md5 = read_checksums(sums)[name]
    result = fetch.fetch_file(
        f"{server.url}/{name}", out / name, md5, fetch.FetchOptions(progress=False)
    )
    assert result.status == "downloaded" and (out / name).read_bytes() == server.files[name]
    assert server.gets(name) == [f"bytes={len(server.files[name])}-"]  # answered 416


def _wrong_md5(server: _Server, sums: Path, mp: pytest.MonkeyPatch) -> None:
    text = sums.read_text()
    sums.write_text(
        re.sub(r"\w{32}(  camelyonpatch_level_2_split_valid_y)", "0" * 32 + r"\1", text)
    )


def _fault(name: str, kind: str) -> Callable[[_Server, Path, pytest.MonkeyPatch], None]:
    def setup(server: _Server, sums: Path, mp: pytest.MonkeyPatch) -> None:
        server.faults[f"camelyonpatch_level_2_split_{name}"] = kind

    return setup


def _tiny_disk(server: _Server, sums: Path, mp: pytest.MonkeyPatch) -> None:
    mp.setattr(fetch, "free_bytes", lambda folder: 1000)


def _disk_fills_up(server: _Server, sums: Path, mp: pytest.MonkeyPatch) -> None:
    def write_chunk(f: Any, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(fetch, "write_chunk", write_chunk)


def _no_setup(server: _Server, sums: Path, mp: pytest.MonkeyPatch) -> None:
    pass


@pytest.mark.parametrize(
    "setup, extra, message, requests_for",
    [
        (_wrong_md5, [], "camelyonpatch_level_2_split_valid_y.h5.gz does not match its MD5", None),
        (_fault("valid_meta.csv", "404"), [], "answered HTTP 404", ("valid_meta.csv", 1)),
        (_fault("valid_x.h5.gz", "500"), ["--retries", "2"], "after 3 tries", ("valid_x.h5.gz", 3)),
        (_tiny_disk, [], "not enough disk space in", None),
        (_disk_fills_up, [], "is full after 0.0 kB of camelyonpatch_level_2_split_valid_y", None),
        (_no_setup, ["--splits", "valid,tset"], "--splits valid,tset: choose one or more", None),
        (_no_setup, ["--url", "ftp://example.org"], "--url must start with http", None),
        (_no_setup, ["--retries", "-1"], "--retries and --retry-wait must be 0 or more", None),
    ],
    ids=[
        "wrong-md5",
        "404",
        "500",
        "no-space",
        "disk-full",
        "bad-splits",
        "bad-url",
        "bad-retries",
    ],
)
def test_bad_cases_are_one_sentence_and_leave_only_verified_files(
    server: _Server,
    sums: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    setup: Callable[[_Server, Path, pytest.MonkeyPatch], None],
    extra: list[str],
    message: str,
    requests_for: tuple[str, int] | None,
) -> None:
    out = tmp_path / "pcam"
    assert _download(server, out, sums, "--splits", "train") == 0  # verified files to protect
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    setup(server, sums, monkeypatch)
    argv = ["--splits", "train,valid", *extra] if "--splits" not in extra else extra
    assert _download(server, out, sums, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("histodetect download: error: ") and err.endswith(".")
    assert {n: (out / n).read_bytes() for n in before} == before
    _verified_or_absent(out, sums)
    if requests_for is not None:
        name, n = requests_for
        assert len(server.gets(f"camelyonpatch_level_2_split_{name}")) == n


def test_a_mismatching_file_is_set_aside_under_a_clear_name(
    server: _Server,
    sums: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _wrong_md5(server, sums, monkeypatch)
    out = tmp_path / "pcam"
    assert _download(server, out, sums, "--splits", "valid") == 2
    name = "camelyonpatch_level_2_split_valid_y.h5.gz"
    aside = out / f"{name}.bad-md5"
    assert aside.read_bytes() == server.files[name] and not (out / name).exists()
    assert f"moved to {aside}" in capsys.readouterr().err


def test_builtin_table_has_the_corrected_valid_and_test_checksums() -> None:
    assert sorted(PCAM_MD5) == sorted(pcam_file_names(["train", "valid", "test"]))
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in PCAM_MD5.values())
    # The README's table has valid and test the other way round; the files have these values.
    assert PCAM_MD5["camelyonpatch_level_2_split_valid_x.h5.gz"].startswith("d5b63470")
    assert PCAM_MD5["camelyonpatch_level_2_split_test_x.h5.gz"].startswith("d8c2d60d")


def test_checksum_file_lines_must_be_in_md5sum_form(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text(f"# comment\n\n{'A' * 32} *./sub/x.h5.gz\n")
    assert read_checksums(good) == {"x.h5.gz": "a" * 32}
    bad = tmp_path / "bad.txt"
    bad.write_text("not-a-checksum x.h5.gz\n")
    with pytest.raises(HistodetectError, match="line 1 is not"):
        read_checksums(bad)
    binary = tmp_path / "sums.md5"
    binary.write_bytes(b"\xff\xfe\x00bad")  # a UTF-16 export, say: it was "a bug"
    with pytest.raises(HistodetectError, match=r"sums\.md5 is not UTF-8 text"):
        read_checksums(binary)
    with pytest.raises(HistodetectError, match="is a folder; give the md5sum file in it"):
        read_checksums(tmp_path)  # it said "does not exist"


def test_a_second_download_of_one_file_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    """From a review: two downloads into one --out appended to one .part file, and the MD5
    check then set the mixed bytes aside, losing the resumable progress of both."""
    from histodetect.atomic import output_lock

    dest = tmp_path / "x.h5.gz"
    part = tmp_path / "x.h5.gz.part"
    part.write_bytes(b"progress so far")
    busy = pytest.raises(HistodetectError, match="another histodetect process is writing")
    with holding_lock_elsewhere(dest), busy:
        fetch.fetch_file("http://127.0.0.1:9/x.h5.gz", dest, "0" * 32)
    assert part.read_bytes() == b"progress so far"
    with output_lock(dest):  # released by the other process: free again
        pass
