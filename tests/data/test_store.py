"""StoreWriter is atomic and PatchStore reads exactly what was written, without decoding."""

from pathlib import Path

import numpy as np
import pytest

from histodetect.data.patch import patch_id
from histodetect.data.store import PIXELS_FILE, open_store
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
