"""`histodetect serve`'s command line: refusals are one sentence and exit 2, before any port
is taken; a busy port is named."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from histodetect.cli.main import main
from histodetect.serve.limits import ServeLimits
from histodetect.serve.server import bind_socket, url_of


def test_refusals_are_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from histodetect.serve import server

    def served(*args: object) -> None:
        raise AssertionError("a refused serve was started")

    monkeypatch.setattr(server, "run_server", served)  # a missed refusal fails, not hangs
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"not used")
    store = tmp_path / "store"  # what makes a folder a store to every check: its header
    store.mkdir()
    (store / "header.json").write_text('{"format_version": 1, "fingerprint": "0"}')
    cases = [
        # from a bad-input hunt: slide jobs were written into a patch store, which ingest
        # --overwrite then refused to replace; a file gave "cannot use ...: File exists"
        (["--jobs-dir", str(store / "jobs")], "lies inside the patch store"),
        (["--jobs-dir", str(ckpt)], f"--jobs-dir {ckpt} is a file; give a folder."),
        (["--slides-dir", str(tmp_path / "missing")], "--slides-dir"),
        (["--model", str(ckpt)], "training checkpoint"),
        (["--max-images", "0"], "--max-images"),
        (["--max-upload-mb", "-1"], "--max-upload-mb"),
        (["--port", "70000"], "--port"),
        (["--host", "no-such-host.invalid"], "--host"),
    ]
    for extra, words in cases:
        assert main(["serve", "--device", "cpu", "--port", "0", *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("histodetect serve: error: ") and words in err, err
        assert len(err.splitlines()) == 1


def test_a_busy_port_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--device", "cpu", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use" in err


def test_bind_socket_picks_a_free_port_and_prints_its_url() -> None:
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert url_of(sock).startswith("http://127.0.0.1:") and not url_of(sock).endswith(":0/")
    finally:
        sock.close()


def test_limits_refuse_a_queue_smaller_than_a_request() -> None:
    with pytest.raises(Exception, match="--max-images"):
        ServeLimits(max_images=300, max_queue=100)
    assert ServeLimits().body_limit_bytes("/v1/slides") > ServeLimits().body_limit_bytes(
        "/v1/predict"
    )


def test_a_jobs_dir_in_use_by_another_server_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers on one --jobs-dir: the second took over the first's running jobs as
    stopped ones (and deleted their uploads); now it is refused before any port is taken."""
    import fcntl
    import os

    from histodetect.cli.serve import JOBS_DIR_LOCK
    from histodetect.serve import server

    def served(*args: object) -> None:
        raise AssertionError("a second server was started on the same --jobs-dir")

    monkeypatch.setattr(server, "run_server", served)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    # the first server's lock, taken as another process does (its own open file)
    held = os.open(jobs / JOBS_DIR_LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["serve", "--device", "cpu", "--port", "0", "--jobs-dir", str(jobs)]) == 2
    finally:
        os.close(held)
    err = capsys.readouterr().err.strip()
    assert f"--jobs-dir {jobs} is in use by another histodetect serve" in err, err
    assert len(err.splitlines()) == 1
