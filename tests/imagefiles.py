"""Writing tiny test images and datasets (imported by tests; pytest puts tests/ on the path)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image


def random_patch(rng: np.random.Generator, size_px: int = 96) -> np.ndarray:
    """A textured uint8 (size, size, 3) patch, distinct per call."""
    return rng.integers(0, 256, size=(size_px, size_px, 3), dtype=np.uint8)


def save_image(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    """Write pixels with Pillow (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path) if mode else Image.fromarray(pixels).save(path)
    return path


def save_png16_rgb(path: Path, pixels: np.ndarray) -> Path:
    """Write uint16 (H, W, 3) pixels as a 16-bit colour PNG, chunk by chunk: Pillow cannot
    write one, and opens one as mode RGB (its 16 bits are only in the tile's raw mode)."""
    import struct
    import zlib

    height, width = pixels.shape[:2]
    big_endian = pixels.astype(">u2")
    raw = b"".join(b"\x00" + big_endian[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, truecolour
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )  # fmt: skip
    return path


def save_tif(path: Path, pixels: np.ndarray) -> Path:
    """Write an uncompressed TIFF with tifffile (as Kaggle's files are)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, pixels)
    return path


def make_kaggle(
    root: Path, rng: np.random.Generator, n_train: int = 6, n_test: int = 3
) -> list[str]:
    """A tiny Kaggle layout with correct SHA-1 names; returns the train ids in label order 0,1,0,1..."""
    from histodetect.data.patch import patch_id

    ids = []
    lines = ["id,label"]
    for i in range(n_train):
        pixels = random_patch(rng)
        pid = patch_id(pixels)
        save_tif(root / "train" / f"{pid}.tif", pixels)
        lines.append(f"{pid},{i % 2}")
        ids.append(pid)
    (root / "train_labels.csv").write_text("\n".join(lines) + "\n")
    for _ in range(n_test):
        pixels = random_patch(rng)
        save_tif(root / "test" / f"{patch_id(pixels)}.tif", pixels)
    return ids


def make_pcam(
    root: Path, rng: np.random.Generator, sizes: dict[str, int], gz: bool = False
) -> None:
    """PCam-named x/y .h5 files (optionally gzipped) and meta CSVs with a `wsi` column."""
    import gzip
    import shutil

    import h5py

    root.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        base = root / f"camelyonpatch_level_2_split_{split}"
        x = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        y = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
        for kind, data in (("x", x), ("y", y)):
            path = Path(f"{base}_{kind}.h5")
            with h5py.File(path, "w") as f:
                f.create_dataset(kind, data=data, chunks=True)
            if gz:
                with path.open("rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                path.unlink()
        meta = [",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi"]
        meta += [f"{i},0,0,False,False,{split}_slide_{i % 3}" for i in range(n)]
        Path(f"{base}_meta.csv").write_text("\n".join(meta) + "\n")


def make_synthetic_store(out: Path, n: int = 256, seed: int = 0, holdout: tuple[str, ...] = ()):
    """A small PatchStore of synthetic patches with slide ids over 8 slides.

    Every patch is in split "train", except that the last slides go to the `holdout` splits,
    two slides each (e.g. ("valid", "test")).
    """
    from histodetect.data.quality import flag_outliers
    from histodetect.data.synthetic import generate_patches
    from histodetect.data.writer import StoreWriter

    patches = generate_patches(n, seed=seed, n_slides=8)
    slides = [str(s) for s in patches.slides]
    order = sorted(set(slides))
    split_of = dict.fromkeys(order, "train")
    for k, name in enumerate(holdout):
        for slide in order[len(order) - 2 * (k + 1) : len(order) - 2 * k]:
            split_of[slide] = name
    splits = [split_of[s] for s in slides]
    with StoreWriter(out) as writer:
        writer.add(patches.pixels, patches.labels, splits, slides, [f"synth#{i}" for i in range(n)],
                   flag_outliers(patches.pixels))  # fmt: skip
        return writer.finish({"source": "synthetic", "source_format": "synthetic"})


@contextlib.contextmanager
def holding_lock_elsewhere(out: Path) -> Iterator[None]:
    """Another process holds histodetect's output lock on `out` inside the block."""
    import subprocess
    import sys

    ready = out.with_name(out.name + ".held")
    code = (
        "import sys, time; from pathlib import Path; from histodetect.atomic import output_lock\n"
        "with output_lock(Path(sys.argv[1])):\n"
        "    Path(sys.argv[2]).touch(); sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out), str(ready)], stdin=subprocess.PIPE
    )
    try:
        for _ in range(600):
            if ready.exists() or holder.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), "the lock holder did not start"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
        ready.unlink(missing_ok=True)
