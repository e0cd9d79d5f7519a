"""Decoding single image files: every bad input is named with a reason, never a crash."""

from pathlib import Path

import numpy as np
import pytest

from histodetect.data.quality import CONVERTED, NOT_RGB, UNREADABLE, WRONG_SIZE
from histodetect.data.sources.image_file import decode_image, decode_image_bytes
from imagefiles import random_patch, save_image, save_png16_rgb, save_tif


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
def test_lossless_rgb_round_trips(tmp_path: Path, rng: np.random.Generator, suffix: str) -> None:
    pixels = random_patch(rng)
    path = save_image(tmp_path / f"a{suffix}", pixels)
    decoded = decode_image(path)
    assert decoded.problem is None
    assert decoded.pixels is not None and np.array_equal(decoded.pixels, pixels)


def test_jpeg_decodes_close_to_original(tmp_path: Path) -> None:
    smooth = np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (96, 1, 3))
    decoded = decode_image(save_image(tmp_path / "a.jpg", smooth))
    assert decoded.problem is None and decoded.pixels is not None
    assert np.abs(decoded.pixels.astype(int) - smooth).mean() < 3


def test_grayscale_is_converted_and_reported(tmp_path: Path, rng: np.random.Generator) -> None:
    grey = rng.integers(0, 256, (96, 96), dtype=np.uint8)
    decoded = decode_image(save_image(tmp_path / "g.png", grey))
    assert decoded.problem is not None and decoded.problem.kind == CONVERTED
    assert "grayscale" in decoded.problem.reason
    assert decoded.pixels is not None
    assert np.array_equal(decoded.pixels[..., 0], grey) and np.array_equal(
        decoded.pixels[..., 2], grey
    )


def test_rgba_is_converted_and_reported(tmp_path: Path, rng: np.random.Generator) -> None:
    rgba = rng.integers(0, 256, (96, 96, 4), dtype=np.uint8)
    decoded = decode_image(save_image(tmp_path / "a.png", rgba))
    assert decoded.problem is not None and decoded.problem.kind == CONVERTED
    assert "alpha" in decoded.problem.reason
    assert decoded.pixels is not None and np.array_equal(decoded.pixels, rgba[..., :3])


def test_16bit_grey_and_rgb_are_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    grey16 = rng.integers(0, 65535, (96, 96), dtype=np.uint16)
    rgb16 = rng.integers(0, 65535, (96, 96, 3), dtype=np.uint16)
    for path in (
        save_image(tmp_path / "g16.png", grey16),
        save_tif(tmp_path / "c16.tif", rgb16),
        save_png16_rgb(tmp_path / "c16.png", rgb16),  # opened as mode RGB: it was read as 8-bit
    ):
        decoded = decode_image(path)
        assert decoded.pixels is None, path
        assert decoded.problem is not None and decoded.problem.kind == NOT_RGB
        assert "8-bit" in decoded.problem.reason and "mode" not in decoded.problem.reason


def test_corrupt_and_truncated_files_are_unreadable(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    garbage = tmp_path / "x.png"
    garbage.write_bytes(b"not an image at all")
    good = save_image(tmp_path / "t.png", random_patch(rng)).read_bytes()
    truncated = tmp_path / "t2.png"
    truncated.write_bytes(good[: len(good) // 2])
    for path in (garbage, truncated):
        decoded = decode_image(path)
        assert decoded.pixels is None
        assert decoded.problem is not None and decoded.problem.kind == UNREADABLE
        assert decoded.problem.origin == str(path)


def test_wrong_size_is_refused_with_sizes(tmp_path: Path, rng: np.random.Generator) -> None:
    decoded = decode_image(save_image(tmp_path / "big.png", random_patch(rng, 128)))
    assert decoded.pixels is None
    assert decoded.problem is not None and decoded.problem.kind == WRONG_SIZE
    assert "128x128" in decoded.problem.reason and "96x96" in decoded.problem.reason
    assert decode_image(tmp_path / "big.png", expected_px=None).pixels is not None


def test_float_tiff_is_refused_in_plain_words(tmp_path: Path, rng: np.random.Generator) -> None:
    import tifffile

    for name, data, photometric in (
        ("grey.tif", rng.random((96, 96), dtype=np.float32), "minisblack"),
        ("rgb.tif", rng.random((96, 96, 3), dtype=np.float32), "rgb"),
    ):
        tifffile.imwrite(tmp_path / name, data, photometric=photometric)
        decoded = decode_image(tmp_path / name)
        assert decoded.problem is not None and decoded.problem.kind == NOT_RGB
        assert "32-bit floating-point pixels" in decoded.problem.reason
        assert "mode" not in decoded.problem.reason


def test_multi_page_tiff_uses_page_one_and_says_so(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    import tifffile

    pages = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "m.tif", pages, photometric="rgb")
    decoded = decode_image(tmp_path / "m.tif")
    assert decoded.pixels is not None and np.array_equal(decoded.pixels, pages[0])
    assert decoded.problem is not None and decoded.problem.kind == CONVERTED
    assert "3 pages" in decoded.problem.reason and "page 1" in decoded.problem.reason


def test_broken_symlink_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.png").symlink_to(tmp_path / "gone.png")
    decoded = decode_image(tmp_path / "a.png")
    assert decoded.problem is not None and decoded.problem.kind == UNREADABLE
    assert "broken symbolic link" in decoded.problem.reason and "gone.png" in decoded.problem.reason


def test_bytes_decode_exactly_as_the_file_does(tmp_path: Path, rng: np.random.Generator) -> None:
    """The service decodes uploads in memory: every kind of file (good, converted, refused,
    unreadable, a 16-bit TIFF only tifffile reads) gets the same pixels and problem as on disk,
    named by the origin it is given."""
    import tifffile

    files = [
        save_image(tmp_path / "rgb.png", random_patch(rng)),
        save_image(tmp_path / "rgb.jpg", random_patch(rng)),
        save_image(tmp_path / "rgb.tif", random_patch(rng)),
        save_image(tmp_path / "grey.png", rng.integers(0, 256, (96, 96), dtype=np.uint8)),
        save_tif(tmp_path / "c16.tif", rng.integers(0, 65535, (96, 96, 3), dtype=np.uint16)),
        save_image(tmp_path / "big.png", random_patch(rng, 128)),
    ]
    tifffile.imwrite(tmp_path / "f.tif", rng.random((96, 96, 3), dtype=np.float32))
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    files += [tmp_path / "f.tif", tmp_path / "junk.png"]
    for path in files:
        on_disk = decode_image(path)
        in_memory = decode_image_bytes(path.read_bytes(), path.name)
        assert (on_disk.pixels is None) == (in_memory.pixels is None), path
        if on_disk.pixels is not None:
            assert np.array_equal(on_disk.pixels, in_memory.pixels), path
        assert (on_disk.problem is None) == (in_memory.problem is None), path
        if on_disk.problem is not None and in_memory.problem is not None:
            assert (in_memory.problem.kind, in_memory.problem.origin) == (
                on_disk.problem.kind,
                path.name,
            ), path
            assert in_memory.problem.reason == on_disk.problem.reason.replace(str(path), path.name)
            assert "BytesIO" not in in_memory.problem.reason
