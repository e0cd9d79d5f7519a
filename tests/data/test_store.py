"""StoreWriter is atomic and PatchStore reads exactly what was written, without decoding."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from histodetect.data.patch import patch_id
from histodetect.data.store import PIXELS_FILE, not_a_store_reason, open_store
from histodetect.data.writer import StoreWriter
from histodetect.errors import HistodetectError


def _write(out: Path, pixels: np.ndarray, **kw: object):
    n = len(pixels)
    with StoreWriter(out, **kw) as w:  # type: ignore[arg-type]
        w.add(
            pixels,
            [i % 2 for i in range(n)],
            ["train"] * n,
            [""] * n,
            [f"o{i}" for i in range(n)],
            [""] * n,
        )
        return w.finish({"source": "test"})


def test_round_trip_ids_and_random_read(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, (20, 96, 96, 3), dtype=np.uint8)
    store = _write(tmp_path / "s", pixels)
    again = open_store(tmp_path / "s")
    assert len(again) == 20 and again.header["n_patches"] == 20
    assert again.manifest.ids.tolist() == [patch_id(p) for p in pixels]
    idx = np.array([7, 3, 19, 3, 0])
    assert np.array_equal(again.read(idx), pixels[idx])
    assert isinstance(again.pixels, np.memmap) and not again.pixels.flags.writeable
    assert again.header["counts"]["train"] == {
        "total": 20,
        "tumour": 10,
        "normal": 10,
        "unlabelled": 0,
    }
    assert store.fingerprint == again.fingerprint


def test_fingerprint_changes_with_labels(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    a = _write(tmp_path / "a", pixels)
    with StoreWriter(tmp_path / "b") as w:
        w.add(pixels, [1, 1, 1, 1], ["train"] * 4, [""] * 4, ["o"] * 4, [""] * 4)
        b = w.finish({})
    assert a.fingerprint != b.fingerprint


def test_failure_inside_writer_leaves_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    with pytest.raises(RuntimeError), StoreWriter(tmp_path / "s") as w:
        w.add(pixels, [0, 1, 0], ["train"] * 3, [""] * 3, ["o"] * 3, [""] * 3)
        raise RuntimeError("killed mid-ingest")
    assert list(tmp_path.iterdir()) == []


def test_existing_store_is_refused_then_replaced_only_when_complete(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    first = rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    _write(tmp_path / "s", first)
    with pytest.raises(HistodetectError, match="already exists"):
        StoreWriter(tmp_path / "s")
    # an overwrite that fails keeps the old store intact
    with pytest.raises(RuntimeError), StoreWriter(tmp_path / "s", overwrite=True):
        raise RuntimeError("boom")
    assert np.array_equal(open_store(tmp_path / "s").read([0, 1]), first)
    second = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    _write(tmp_path / "s", second, overwrite=True)
    assert len(open_store(tmp_path / "s")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_stale_temp_of_a_killed_run_is_removed(tmp_path: Path, rng: np.random.Generator) -> None:
    stale = tmp_path / ".s.tmp-deadbeef"
    stale.mkdir()
    (stale / PIXELS_FILE).write_bytes(b"half")
    _write(tmp_path / "s", rng.integers(0, 256, (1, 96, 96, 3), dtype=np.uint8))
    assert not stale.exists()


def test_damaged_or_foreign_folder_is_one_sentence(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    with pytest.raises(HistodetectError, match="not a patch store"):
        open_store(tmp_path)
    _write(tmp_path / "s", rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8))
    with (tmp_path / "s" / PIXELS_FILE).open("r+b") as f:
        f.truncate(100)
    with pytest.raises(HistodetectError, match="damaged"):
        open_store(tmp_path / "s")


def test_writer_rejects_wrong_shapes(tmp_path: Path) -> None:
    with StoreWriter(tmp_path / "s") as w, pytest.raises(ValueError, match="uint8"):
        w.add(np.zeros((1, 32, 32, 3), np.uint8), [0], ["a"], [""], ["o"], [""])


def test_only_a_store_histodetect_wrote_may_be_replaced(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    store = _write(tmp_path / "s", rng.integers(0, 256, (2, 96, 96, 3), dtype=np.uint8))
    assert not_a_store_reason(store.root) is None
    (store.root / "inspect").mkdir()
    (store.root / "inspect" / "inspect.md").write_text("# report")
    assert not_a_store_reason(store.root) is None  # its own report folder is part of it
    (store.root / "inspect" / "mine.png").write_bytes(b"x")
    assert "inspect" in str(not_a_store_reason(store.root))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "header.json").write_text('{"format_version": 1}')
    assert "header.json" in str(not_a_store_reason(tmp_path / "plain"))
    with pytest.raises(HistodetectError, match="not a patch store"):
        StoreWriter(tmp_path / "plain", overwrite=True)
    with pytest.raises(HistodetectError, match="holds the input"):
        StoreWriter(tmp_path, overwrite=True, inputs=[tmp_path / "plain"])


def test_second_writer_to_the_same_out_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    with StoreWriter(tmp_path / "s") as w:
        w.add(rng.integers(0, 256, (1, 96, 96, 3), dtype=np.uint8), [1], ["t"], [""], ["o"], [""])
        other = subprocess.run(
            [sys.executable, "-c", SECOND_WRITER, str(tmp_path / "s")],
            capture_output=True,
            text=True,
        )
        assert other.returncode == 3, other.stderr
        assert w.temp_dir.is_dir()  # the second writer deleted nothing of the first
        w.finish({})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # the lock file is gone too


SECOND_WRITER = """
import sys
from histodetect.data.writer import StoreWriter
from histodetect.errors import HistodetectError
try:
    with StoreWriter(sys.argv[1]):
        pass
except HistodetectError as exc:
    sys.exit(3 if "another histodetect process is writing" in str(exc) else 4)
"""


def test_manifest_that_does_not_match_its_header_is_named(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    _write(tmp_path / "s", rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8))
    manifest = tmp_path / "s" / "manifest.csv"
    good = manifest.read_text()
    for bad, says in (
        (good.replace(",train,", ",valid,", 1), "differ from those recorded in header.json"),
        (good.replace(",0,train,", ",x,train,", 1), "label 'x'"),
        (good + "a,b\n", "line 5 has 2 fields"),
    ):
        manifest.write_text(bad)
        with pytest.raises(HistodetectError, match=f"{manifest}.*{says}"):
            open_store(tmp_path / "s")
    manifest.write_text(good)
    (tmp_path / "s" / "header.json").write_text("{not json")
    with pytest.raises(HistodetectError, match=r"header\.json is damaged"):
        open_store(tmp_path / "s")
