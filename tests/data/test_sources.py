"""Each layout reader lists, labels and splits its inputs, and names every bad one."""

from pathlib import Path

import numpy as np
import pytest

from histodetect.data.quality import (
    AMBIGUOUS_ID,
    BAD_LABEL,
    LABEL_CONFLICT,
    MISSING_IMAGE,
    MISSING_LABEL,
    MISSING_SLIDE,
)
from histodetect.data.sources import (
    CsvListSource,
    FolderSource,
    KaggleSource,
    PcamSource,
    detect_format,
    open_source,
)
from histodetect.errors import HistodetectError
from imagefiles import make_kaggle, make_pcam, random_patch, save_image


def _all(source: object) -> tuple[np.ndarray, np.ndarray, list[str], list[str], list[str]]:
    blocks = list(source.iter_blocks(workers=1))  # type: ignore[attr-defined]
    return (
        np.concatenate([b.pixels for b in blocks]),
        np.concatenate([b.labels for b in blocks]),
        [s for b in blocks for s in b.splits],
        [s for b in blocks for s in b.slides],
        [o for b in blocks for o in b.origins],
    )


def test_kaggle_layout_labels_test_split_and_problems(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    ids = make_kaggle(tmp_path, rng, n_train=4, n_test=2)
    # an image without a label, a label without an image, a label that is not 0/1
    save_image(tmp_path / "train" / "orphan.tif", random_patch(rng))
    with (tmp_path / "train_labels.csv").open("a") as f:
        f.write("ghost,1\n")
    lines = (tmp_path / "train_labels.csv").read_text().splitlines()
    lines[1] = f"{ids[0]},2"
    (tmp_path / "train_labels.csv").write_text("\n".join(lines) + "\n")

    source = KaggleSource(tmp_path)
    kinds = {(p.kind, Path(p.origin).name.split(":")[-1]) for p in source.problems}
    assert (MISSING_LABEL, "orphan.tif") in kinds
    assert (MISSING_IMAGE, "ghost") in kinds
    assert (BAD_LABEL, ids[0]) in kinds
    _, labels, splits, _, origins = _all(source)
    assert splits.count("train") == 3 and splits.count("test") == 2
    assert labels.tolist().count(-1) == 2
    assert all(Path(o).stem in ids for o, s in zip(origins, splits, strict=True) if s == "train")


def test_kaggle_slides_file_is_used(tmp_path: Path, rng: np.random.Generator) -> None:
    ids = make_kaggle(tmp_path, rng, n_train=4, n_test=0)
    (tmp_path / "train_slides.csv").write_text(
        "id,slide\n" + "".join(f"{i},s{k % 2}\n" for k, i in enumerate(ids))
    )
    _, _, _, slides, _ = _all(KaggleSource(tmp_path))
    assert sorted(slides) == ["s0", "s0", "s1", "s1"]
    with pytest.raises(HistodetectError, match="does not exist"):
        KaggleSource(tmp_path, slides_csv=tmp_path / "nope.csv")


def test_patches_the_slides_file_does_not_name_are_reported(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """From a bad-input hunt: with `--slides` naming 10 of 15 patches, ingest said "No
    problems found"; the blanks then made train fall back to a random split in silence."""
    ids = make_kaggle(tmp_path, rng, n_train=4, n_test=0)
    slides = tmp_path / "slides.csv"
    slides.write_text(f"id,slide\n{ids[0]},s0\n{ids[1]},s1\n{ids[2]},\n")
    source = KaggleSource(tmp_path, slides_csv=slides)
    missing = sorted(Path(p.origin).stem for p in source.problems if p.kind == MISSING_SLIDE)
    assert missing == sorted(ids[2:]), source.problems
    assert "random split" in source.problems[0].reason
    assert sorted(_all(source)[3]) == ["", "", "s0", "s1"]  # kept, without a slide
    slides.write_text("id,slide\n")  # an empty slide file names none of them (from a review)
    source = KaggleSource(tmp_path, slides_csv=slides)
    assert sum(p.kind == MISSING_SLIDE for p in source.problems) == 4
    assert not any(p.kind == MISSING_SLIDE for p in KaggleSource(tmp_path).problems)  # no file


def test_images_outside_the_label_folders_are_reported(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """From a bad-input hunt: images beside the split folders, in a folder without label
    folders, or beside the label folders were left out with no word in the report."""
    for split in ("Train", "Val"):
        for label in ("0", "1"):
            save_image(tmp_path / split / label / "a.png", random_patch(rng))
    loose = [tmp_path / "loose.jpg", tmp_path / "extra" / "b.png", tmp_path / "Train" / "c.tif"]
    for path in loose:
        save_image(path, random_patch(rng))
    (tmp_path / "Train" / "notes.txt").write_text("not an image\n")
    source = FolderSource(tmp_path)
    reported = sorted(p.origin for p in source.problems if p.kind == MISSING_LABEL)
    assert reported == sorted(map(str, loose)), source.problems
    assert len(_all(source)[1]) == 4


def test_folders_with_and_without_split_level(tmp_path: Path, rng: np.random.Generator) -> None:
    for split in ("train", "valid"):
        for label in ("0", "1"):
            save_image(tmp_path / "split" / split / label / "a.png", random_patch(rng))
    save_image(tmp_path / "split" / "train" / "maybe" / "b.png", random_patch(rng))
    source = FolderSource(tmp_path / "split")
    assert [p.kind for p in source.problems] == [BAD_LABEL]
    _, labels, splits, _, _ = _all(source)
    assert sorted(zip(splits, labels.tolist(), strict=True)) == [
        ("train", 0),
        ("train", 1),
        ("valid", 0),
        ("valid", 1),
    ]

    save_image(tmp_path / "flat" / "1" / "c.jpg", random_patch(rng))
    _, labels, splits, _, _ = _all(FolderSource(tmp_path / "flat"))
    assert labels.tolist() == [1] and splits == [""]


def test_csv_list_with_split_slide_and_problems(tmp_path: Path, rng: np.random.Generator) -> None:
    save_image(tmp_path / "img" / "a.png", random_patch(rng))
    save_image(tmp_path / "img" / "b.png", random_patch(rng))
    save_image(tmp_path / "img" / "c.png", random_patch(rng))
    (tmp_path / "list.csv").write_text(
        "path,label,split,slide\nimg/a.png,1,train,s1\nimg/b.png,,test,\nimg/c.png,yes,train,s2\nimg/missing.png,0,train,s3\n"
    )
    source = CsvListSource(tmp_path / "list.csv")
    assert sorted(p.kind for p in source.problems) == [BAD_LABEL, MISSING_IMAGE]
    _, labels, splits, slides, _ = _all(source)
    assert labels.tolist() == [1, -1] and splits == ["train", "test"] and slides == ["s1", ""]


def test_csv_without_required_columns_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("file,class\na.png,1\n")
    with pytest.raises(HistodetectError, match="no column path, label"):
        CsvListSource(tmp_path / "bad.csv")


@pytest.mark.parametrize("gz", [False, True])
def test_pcam_h5_splits_labels_slides(tmp_path: Path, rng: np.random.Generator, gz: bool) -> None:
    make_pcam(tmp_path / "pcam", rng, {"train": 10, "valid": 4}, gz=gz)
    source = PcamSource(tmp_path / "pcam", scratch_dir=tmp_path)
    assert source.count() == 14
    pixels, labels, splits, slides, origins = _all(source)
    assert pixels.shape == (14, 96, 96, 3)
    assert splits == ["train"] * 10 + ["valid"] * 4
    assert labels.tolist() == [i % 2 for i in range(10)] + [i % 2 for i in range(4)]
    assert slides[:3] == ["train_slide_0", "train_slide_1", "train_slide_2"]
    assert origins[11].endswith("_valid_x.h5#1") or origins[11].endswith("_valid_x.h5.gz#1")
    assert not any(p.name.startswith("pcam-gunzip") for p in tmp_path.iterdir()), (
        "scratch left behind"
    )


def test_pcam_single_file_and_missing_labels(tmp_path: Path, rng: np.random.Generator) -> None:
    make_pcam(tmp_path, rng, {"train": 3, "test": 2})
    (tmp_path / "camelyonpatch_level_2_split_test_y.h5").unlink()
    source = PcamSource(tmp_path / "camelyonpatch_level_2_split_test_x.h5")
    _, labels, splits, _, _ = _all(source)
    assert splits == ["test", "test"] and labels.tolist() == [-1, -1]


def test_pcam_corrupt_gzip_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "camelyonpatch_level_2_split_valid_x.h5.gz").write_bytes(b"garbage")
    with pytest.raises(HistodetectError, match="not a readable gzip"):
        list(PcamSource(tmp_path).iter_blocks(1))


def test_detect_format_and_override(tmp_path: Path, rng: np.random.Generator) -> None:
    make_kaggle(tmp_path / "k", rng, n_train=2, n_test=0)
    make_pcam(tmp_path / "p", rng, {"valid": 2})
    save_image(tmp_path / "f" / "train" / "0" / "a.png", random_patch(rng))
    (tmp_path / "l.csv").write_text("path,label\n")
    assert detect_format(tmp_path / "k") == "kaggle"
    assert detect_format(tmp_path / "p") == "pcam"
    assert detect_format(tmp_path / "p" / "camelyonpatch_level_2_split_valid_x.h5") == "pcam"
    assert detect_format(tmp_path / "f") == "folders"
    assert detect_format(tmp_path / "l.csv") == "csv"
    (tmp_path / "empty").mkdir()
    with pytest.raises(HistodetectError, match="cannot tell the layout"):
        detect_format(tmp_path / "empty")
    with pytest.raises(HistodetectError, match="does not exist"):
        detect_format(tmp_path / "nowhere")
    with pytest.raises(HistodetectError, match="unknown format"):
        open_source(tmp_path / "f", "parquet")
    assert isinstance(open_source(tmp_path / "f" / "train", "folders"), FolderSource)


def test_kaggle_ambiguous_ids_and_conflicting_labels_are_left_out(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    ids = make_kaggle(tmp_path, rng, n_train=4, n_test=0)
    (tmp_path / "train" / f"{ids[1]}.tiff").write_bytes(
        (tmp_path / "train" / f"{ids[1]}.tif").read_bytes()
    )
    with (tmp_path / "train_labels.csv").open("a") as f:
        f.write(f"{ids[0]},1\n{ids[2]},0\n")  # ids[0] was 0: a conflict; ids[2] repeated as 0
    source = KaggleSource(tmp_path)
    kinds = sorted((p.kind, p.origin.rsplit("/", 1)[-1]) for p in source.problems)
    assert kinds == [
        (AMBIGUOUS_ID, f"{ids[1]}.tif"),
        (BAD_LABEL, f"train_labels.csv:{ids[2]}"),
        (LABEL_CONFLICT, f"train_labels.csv:{ids[0]}"),
    ]
    assert sorted(e.path.stem for e in source.entries) == sorted([ids[2], ids[3]])


def test_pcam_x_that_is_not_uint8_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    import h5py

    make_pcam(tmp_path, rng, {"valid": 2})
    with h5py.File(tmp_path / "camelyonpatch_level_2_split_valid_x.h5", "w") as f:
        f.create_dataset("x", data=rng.random((2, 96, 96, 3)).astype(np.float32))
    with pytest.raises(HistodetectError, match="float32 pixels, not uint8"):
        list(PcamSource(tmp_path).iter_blocks(1))
