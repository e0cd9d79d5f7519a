"""Tests for the synthetic H&E-like patch generator and its Kaggle-layout writer."""

from __future__ import annotations

import csv
import hashlib
import re
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histodetect.data import synthetic
from histodetect.data.synthetic import (
    PATCH_SIZE_PX,
    SyntheticPatches,
    generate_patches,
    write_kaggle_layout,
)
from histodetect.errors import HistodetectError

CENTRE = slice(32, 64)
DARK_GREY_LEVEL = 100  # mean RGB below this counts as dark nucleus stain
NUCLEUS_CORE_PX = 5  # a dark pixel whose 5x5 neighbourhood is all dark lies in a large nucleus


@pytest.fixture(scope="module")
def batch() -> SyntheticPatches:
    """400 patches, drawn once for the statistical tests."""
    return generate_patches(400, seed=0)


def _auc(score: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(positive scores above negative), ties counting one half.

    Computed over all pairs rather than with scikit-learn, whose import alone takes seconds.
    """
    pos, neg = score[labels == 1][:, None], score[labels == 0][None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def _large_dark_nucleus_pixels(pixels: np.ndarray) -> np.ndarray:
    """(n, 96, 96) bool: dark pixels whose whole 5x5 neighbourhood is dark (small nuclei erode away)."""
    dark = pixels.astype(np.float32).mean(axis=-1) < DARK_GREY_LEVEL
    size, half = NUCLEUS_CORE_PX, NUCLEUS_CORE_PX // 2
    stop = PATCH_SIZE_PX - size + 1
    rows = np.logical_and.reduce([dark[:, k : k + stop, :] for k in range(size)])
    core = np.logical_and.reduce([rows[:, :, k : k + stop] for k in range(size)])
    return np.pad(core, ((0, 0), (half, half), (half, half)))


def _ring(masks: np.ndarray) -> np.ndarray:
    """Copy of (n, 96, 96) masks with the centre 32x32 box cleared."""
    ring = masks.copy()
    ring[:, CENTRE, CENTRE] = False
    return ring


def test_shapes_and_dtypes() -> None:
    patches = generate_patches(12, seed=1)
    assert patches.pixels.shape == (12, PATCH_SIZE_PX, PATCH_SIZE_PX, 3)
    assert patches.pixels.dtype == np.uint8
    assert patches.labels.shape == (12,)
    assert patches.labels.dtype == np.int8
    assert set(np.unique(patches.labels)) <= {0, 1}
    assert patches.slides.shape == (12,)
    assert all(isinstance(s, str) for s in patches.slides.tolist())
    assert patches.tumour_masks.shape == (12, PATCH_SIZE_PX, PATCH_SIZE_PX)
    assert patches.tumour_masks.dtype == bool
    assert len(patches) == 12


def test_same_seed_gives_identical_bytes_and_other_seed_differs() -> None:
    first = generate_patches(8, seed=7)
    again = generate_patches(8, seed=7)
    other = generate_patches(8, seed=8)
    assert first.pixels.tobytes() == again.pixels.tobytes()
    assert np.array_equal(first.labels, again.labels)
    assert np.array_equal(first.slides, again.slides)
    assert np.array_equal(first.tumour_masks, again.tumour_masks)
    assert first.pixels.tobytes() != other.pixels.tobytes()


def test_label_is_one_iff_a_tumour_pixel_lies_in_the_centre(batch: SyntheticPatches) -> None:
    in_centre = batch.tumour_masks[:, CENTRE, CENTRE].any(axis=(1, 2))
    assert np.array_equal(batch.labels == 1, in_centre)


def test_a_share_of_negatives_carries_tumour_only_outside_the_centre(
    batch: SyntheticPatches,
) -> None:
    negatives = batch.tumour_masks[batch.labels == 0]
    decoy_share = negatives.any(axis=(1, 2)).mean()
    assert 0.3 <= decoy_share <= 0.45
    assert not negatives[:, CENTRE, CENTRE].any()


def test_tumour_nuclei_are_large_and_darker_than_the_rest(batch: SyntheticPatches) -> None:
    grey = batch.pixels.astype(np.float32).mean(axis=-1)
    assert grey[batch.tumour_masks].mean() < grey[~batch.tumour_masks].mean() - 60
    assert np.median(grey[~batch.tumour_masks]) > 140  # mostly pale pink stroma
    per_patch_px = batch.tumour_masks.sum(axis=(1, 2))
    assert per_patch_px[batch.labels == 1].min() >= 50  # at least one nucleus of radius >= 5 px


def test_pixels_look_like_h_and_e(batch: SyntheticPatches) -> None:
    """Stroma is pink (red and blue above green); tumour nuclei are purple (blue above red)."""
    rgb = batch.pixels.astype(np.float32)
    stroma = rgb[~batch.tumour_masks & (rgb.mean(axis=-1) > 150)]
    red, green, blue = stroma.mean(axis=0)
    assert red > green + 20 and blue > green + 10
    nuclei = rgb[batch.tumour_masks].mean(axis=0)
    assert nuclei[2] > nuclei[0]


def test_centre_feature_separates_labels_but_the_ring_feature_does_not(
    batch: SyntheticPatches,
) -> None:
    core = _large_dark_nucleus_pixels(batch.pixels)
    centre_score = core[:, CENTRE, CENTRE].mean(axis=(1, 2))
    ring_score = _ring(core).sum(axis=(1, 2))
    centre_auc = _auc(centre_score, batch.labels)
    ring_auc = _auc(ring_score, batch.labels)
    assert centre_auc > 0.9
    assert ring_auc < 0.75
    assert centre_auc - ring_auc > 0.2


def test_default_positive_fraction_is_four_tenths(batch: SyntheticPatches) -> None:
    assert batch.labels.mean() == pytest.approx(0.4, abs=0.01)


@pytest.mark.parametrize(("n", "fraction"), [(40, 0.25), (33, 0.7), (10, 0.0), (10, 1.0)])
def test_positive_fraction_is_as_asked(n: int, fraction: float) -> None:
    patches = generate_patches(n, seed=5, positive_fraction=fraction)
    assert abs(patches.labels.mean() - fraction) <= 0.5 / n + 1e-9


def test_several_slides_with_different_mean_colours(batch: SyntheticPatches) -> None:
    slides = np.unique(batch.slides)
    assert len(slides) >= 4
    assert all(re.fullmatch(r"synth-slide-\d{3}", s) for s in slides.tolist())
    means = np.array([batch.pixels[batch.slides == s].mean(axis=(0, 1, 2)) for s in slides])
    spread = np.ptp(means, axis=0)
    assert spread.max() > 10  # grey levels between the most different slides


def test_n_slides_is_respected() -> None:
    patches = generate_patches(30, seed=2, n_slides=3)
    assert sorted(set(patches.slides.tolist())) == [
        "synth-slide-000",
        "synth-slide-001",
        "synth-slide-002",
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": 5, "positive_fraction": 1.5},
        {"n": 5, "positive_fraction": -0.1},
        {"n": 5, "seed": -1},
        {"n": 5, "n_slides": 0},
        {"n": 2.5},
    ],
)
def test_generate_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(HistodetectError):
        generate_patches(**kwargs)  # type: ignore[arg-type]


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def _sha1(pixels: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def test_write_kaggle_layout(tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    summary = write_kaggle_layout(out, 40, seed=3, test_fraction=0.1, progress=False)
    assert summary == {
        "out_dir": str(out),
        "n_train": 36,
        "n_test": 4,
        "n_positive_train": summary["n_positive_train"],
        "seed": 3,
    }
    train = sorted((out / "train").glob("*.tif"))
    test = sorted((out / "test").glob("*.tif"))
    assert (len(train), len(test)) == (36, 4)
    for path in train + test:
        via_tifffile = tifffile.imread(path)
        with Image.open(path) as image:
            via_pillow = np.asarray(image.convert("RGB"))
        assert via_tifffile.shape == (PATCH_SIZE_PX, PATCH_SIZE_PX, 3)
        assert via_tifffile.dtype == np.uint8
        assert np.array_equal(via_tifffile, via_pillow)
        assert path.stem == _sha1(via_tifffile)
    labels = _read_csv(out / "train_labels.csv")
    assert labels[0] == ["id", "label"]
    assert sorted(row[0] for row in labels[1:]) == [p.stem for p in train]
    assert {row[1] for row in labels[1:]} <= {"0", "1"}
    assert sum(row[1] == "1" for row in labels[1:]) == summary["n_positive_train"]
    slides = _read_csv(out / "train_slides.csv")
    assert slides[0] == ["id", "slide"]
    assert sorted(row[0] for row in slides[1:]) == [p.stem for p in train]
    submission = _read_csv(out / "sample_submission.csv")
    assert submission[0] == ["id", "label"]
    assert sorted(row[0] for row in submission[1:]) == [p.stem for p in test]
    assert {row[1] for row in submission[1:]} == {"0"}
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in readme and "seed: 3" in readme
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]


def test_write_kaggle_layout_labels_match_generated_patches(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_kaggle_layout(out, 20, seed=4, test_fraction=0.0, progress=False)
    patches = generate_patches(20, seed=4)
    expected = {
        _sha1(p): str(int(label)) for p, label in zip(patches.pixels, patches.labels, strict=True)
    }
    rows = _read_csv(out / "train_labels.csv")[1:]
    assert {row[0]: row[1] for row in rows} == expected


def test_write_refuses_a_non_empty_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(HistodetectError, match="already exists"):
        write_kaggle_layout(out, 5, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_write_accepts_an_empty_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    summary = write_kaggle_layout(out, 5, test_fraction=0.2, progress=False)
    assert summary["n_train"] == 4
    assert (out / "train_labels.csv").is_file()


def test_write_removes_its_temp_dir_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real_imwrite = tifffile.imwrite

    def failing_imwrite(path: Path, *args: object, **kwargs: object) -> None:
        calls.append(path)
        if len(calls) > 3:
            raise OSError("disk full")
        real_imwrite(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic.tifffile, "imwrite", failing_imwrite)
    with pytest.raises(OSError, match="disk full"):
        write_kaggle_layout(tmp_path / "out", 10, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": 10, "test_fraction": 1.0},
        {"n": 10, "test_fraction": -0.5},
        {"n": 1, "test_fraction": 0.6},
    ],
)
def test_write_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, float]) -> None:
    with pytest.raises(HistodetectError):
        write_kaggle_layout(tmp_path / "out", progress=False, **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_four_thousand_patches_take_under_thirty_cpu_seconds() -> None:
    start = time.process_time()  # CPU time, so a busy machine does not fail the test
    generate_patches(4000, seed=0)
    assert time.process_time() - start < 30.0
