"""`histodetect slide` end to end on the layout slide with the bundled model, and bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from histodetect.cli.main import main
from histodetect.slides.outputs import SLIDE_OUTPUTS
from imagefiles import save_png16_rgb
from slidefiles import MARGIN_PATCHES, TUMOUR_COLS, TUMOUR_ROWS, LayoutSlide, write_pyramid

OUTPUTS = {"tiles.csv", "heatmap.png", "overlay.png", "mask.png", "regions.geojson",
           "summary.json", "report.html"}  # fmt: skip
CELL_LEVEL0_PX = 64  # 32 model px at 0.972 µm/px on a 0.486 µm/px level 0


def _run(argv: list[str]) -> int:
    return main(["slide", *argv, "--no-progress", "--device", "cpu"])


def _cells(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with (folder / "tiles.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["x", "y", "width", "height", "probability"]
    r, c = (np.array([int(row[k]) for row in rows]) for k in ("row", "col"))
    return r, c, np.array([float(row["probability"]) for row in rows])


@pytest.fixture(scope="module")
def tiff_result(tiff_slide: LayoutSlide, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("slide-out")
    assert _run([str(tiff_slide.path), "--out", str(out), "--reader", "tifffile"]) == 0
    return out / "layout"


def test_every_output_is_written(tiff_result: Path) -> None:
    assert {p.name for p in tiff_result.iterdir()} == OUTPUTS
    assert not [p for p in tiff_result.parent.iterdir() if p.name.startswith(".")]
    summary = json.loads((tiff_result / "summary.json").read_text())
    r, _, p = _cells(tiff_result)
    assert summary["n_tiles"] == len(r) and summary["level_read"] == 1
    assert (
        summary["slide_mpp"] == pytest.approx(0.486) and summary["slide_mpp_source"] == "metadata"
    )
    assert summary["max_probability"] == pytest.approx(p.max(), abs=1e-6)
    assert 0 < summary["tumour_fraction_of_tissue"] < 1 and summary["tumour_area_mm2"] > 0
    assert summary["tiles_per_s"]["overall"] > 0 and summary["model"]["name"]
    report = (tiff_result / "report.html").read_text()
    assert "data:image/jpeg;base64," in report and '<path d="M' in report
    assert "http://" not in report.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_heatmap_finds_the_tumour_region(tiff_result: Path, tiff_slide: LayoutSlide) -> None:
    r, c, p = _cells(tiff_result)
    auc = roc_auc_score(tiff_slide.tumour[r, c], p)
    centre = tiff_slide.centre[r, c]
    centre_auc = roc_auc_score(tiff_slide.tumour[r, c][centre], p[centre])
    print(f"layout slide, bundled model: cell AUC {auc:.3f}, centre-cell AUC {centre_auc:.3f}")
    assert auc >= 0.8  # modest: the bundled model will be replaced by a stronger one
    heatmap = np.asarray(Image.open(tiff_result / "heatmap.png"))
    assert heatmap.shape == (*tiff_slide.tissue.shape, 4)
    scored = np.zeros(tiff_slide.tissue.shape, dtype=bool)
    scored[r, c] = True
    np.testing.assert_array_equal(heatmap[..., 3] > 0, scored)


def test_mask_excludes_blank_background(tiff_result: Path, tiff_slide: LayoutSlide) -> None:
    r, c, _ = _cells(tiff_result)
    assert tiff_slide.tissue[r, c].all()  # no glass tile reached the model
    assert len(r) > 0.6 * tiff_slide.tissue.sum()
    mask = np.asarray(Image.open(tiff_result / "mask.png")) > 0
    k = mask.shape[0] // tiff_slide.tissue.shape[0]
    glass = ~tiff_slide.tissue.repeat(k, axis=0).repeat(k, axis=1)
    assert not mask[: glass.shape[0], : glass.shape[1]][glass].any()


def test_regions_fall_on_the_tumour_block(tiff_result: Path) -> None:
    from shapely.geometry import box, shape

    features = json.loads((tiff_result / "regions.geojson").read_text())["features"]
    assert features and all(f["properties"]["objectType"] == "annotation" for f in features)
    regions = [shape(f["geometry"]) for f in features]
    cell = 3 * CELL_LEVEL0_PX  # one patch
    block = box((TUMOUR_COLS.start + MARGIN_PATCHES) * cell, (TUMOUR_ROWS.start + MARGIN_PATCHES) * cell,
                (TUMOUR_COLS.stop + MARGIN_PATCHES) * cell, (TUMOUR_ROWS.stop + MARGIN_PATCHES) * cell)  # fmt: skip
    inside = sum(g.intersection(block.buffer(CELL_LEVEL0_PX)).area for g in regions)
    total = sum(g.area for g in regions)
    print(f"regions: {len(regions)}, {inside / total:.2f} of their area on the tumour block")
    assert block.contains(regions[0].centroid)  # the largest region
    assert inside / total >= 0.5
    assert regions[0].intersection(block).area >= 0.3 * block.area


def test_openslide_and_png_give_the_same_probabilities(
    tiff_result: Path, tiff_slide: LayoutSlide, png_slide: LayoutSlide, tmp_path: Path
) -> None:
    pytest.importorskip("openslide", reason="the slides extra (OpenSlide) is not installed")
    png = tmp_path / "layout_png.png"
    png.write_bytes(png_slide.path.read_bytes())
    argv = [str(tiff_slide.path), str(png), "--out", str(tmp_path / "out"), "--mpp", "0.972"]
    assert _run([*argv, "--shard", "2/2"]) == 0  # the PNG only (it has no resolution)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["layout_png"]
    assert _run([str(tiff_slide.path), "--out", str(tmp_path / "out")]) == 0  # OpenSlide (auto)
    summary = json.loads((tmp_path / "out" / "layout" / "summary.json").read_text())
    assert summary["reader"] == "openslide"
    expected = _cells(tiff_result)
    for name in ("layout", "layout_png"):
        got = _cells(tmp_path / "out" / name)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_allclose(got[2], expected[2], atol=2e-6)


def test_rerun_skips_finished_slides(
    tiff_result: Path, tiff_slide: LayoutSlide, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (tiff_result / "summary.json").stat().st_mtime_ns
    assert _run([str(tiff_slide.path), "--out", str(tiff_result.parent)]) == 0
    captured = capsys.readouterr()
    assert "already done, skipped" in captured.out and captured.err == ""
    assert (tiff_result / "summary.json").stat().st_mtime_ns == before
    # asked otherwise: still skipped, and a note says what the kept result was made with
    assert _run([str(tiff_slide.path), "--out", str(tiff_result.parent), "--stride-px", "16",
                 "--tta"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "already done, skipped" in captured.out
    calibrated, kept = captured.err.strip().splitlines()
    assert "was calibrated without --tta and runs with it" in calibrated  # the bundled model's
    assert kept == (
        f"note: {tiff_result} was made with --stride-px 32, no --tta, not what this run asks; "
        "--overwrite redoes it so."
    )
    assert (tiff_result / "summary.json").stat().st_mtime_ns == before


def test_a_rerun_at_another_mpp_says_the_kept_result_was_made_otherwise(
    tiff_result: Path, tiff_slide: LayoutSlide, capsys: pytest.CaptureFixture[str]
) -> None:
    """From a bad-input hunt: a rerun with a corrected --mpp (0.5 against the 0.972 of the
    first run: 2,071 tiles against 8,010) kept the wrong result without a word."""
    before = (tiff_result / "summary.json").stat().st_mtime_ns
    argv = [str(tiff_slide.path), "--out", str(tiff_result.parent), "--reader", "tifffile"]
    assert _run([*argv, "--mpp", "0.25"]) == 0
    captured = capsys.readouterr()
    assert "already done, skipped" in captured.out
    assert captured.err.strip() == (
        f"note: {tiff_result} was made with the slide's own 0.486 µm/px, not what this run "
        "asks; --overwrite redoes it so."
    )
    assert _run([*argv, "--mpp", "0.486"]) == 0  # what the slide records: no note
    assert capsys.readouterr().err == ""
    assert (tiff_result / "summary.json").stat().st_mtime_ns == before


def test_one_unreadable_slide_fails_alone_and_the_others_go_on(
    tiff_slide: LayoutSlide, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From a bad-input hunt: one truncated slide in a batch stopped it before any slide was
    analysed, where the README says a failing slide is reported and the others go on."""
    cut = _bad_slide("truncated", tmp_path, tiff_slide.path)
    out = tmp_path / "out"
    argv = [str(cut), str(tiff_slide.path), "--out", str(out), "--stride-px", "96"]
    assert _run([*argv, "--reader", "tifffile"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith(f"histodetect slide: error: {cut} ") and len(err.splitlines()) == 1
    assert "1 failed" in captured.out
    assert [p.name for p in out.iterdir()] == ["layout"]
    assert json.loads((out / "layout" / "summary.json").read_text())["n_tiles"] > 0


def test_a_file_where_a_slide_result_goes_is_refused_before_any_work(
    tiff_slide: LayoutSlide, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From a bad-input hunt: a user's file `OUT/layout` stopped the batch midway with "cannot
    use OUT/.layout.tmp-...: Not a directory", a temporary folder the user never named."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "layout").write_text("mine\n")
    assert _run([str(tiff_slide.path), "--out", str(out), "--stride-px", "96"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"histodetect slide: error: {out / 'layout'} is a file, not a slide result, where "
        f"{tiff_slide.path}'s results go; move it away or choose another --out (nothing was "
        "changed)."
    )
    assert (out / "layout").read_text() == "mine\n" and [p.name for p in out.iterdir()] == [
        "layout"
    ]


def test_overwrite_replaces_a_finished_result_only(
    tiff_result: Path, tiff_slide: LayoutSlide, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(tiff_result, out / "layout")
    argv = [str(tiff_slide.path), "--out", str(out), "--stride-px", "96", "--overwrite"]
    assert _run(argv) == 0
    assert json.loads((out / "layout" / "summary.json").read_text())["stride_px"] == 96
    assert sorted(p.name for p in out.iterdir()) == ["layout"]
    (out / "layout" / "notes.txt").write_text("mine\n")  # a user's file: --overwrite refuses
    assert _run(argv) == 2
    assert "notes.txt, which histodetect did not write" in capsys.readouterr().err
    assert (out / "layout" / "notes.txt").read_text() == "mine\n"
    (out / "layout" / "notes.txt").unlink()
    (out / "layout" / "report.html").unlink()  # what is left is still ours: redone
    assert _run(argv) == 0
    assert sorted(p.name for p in (out / "layout").iterdir()) == sorted(SLIDE_OUTPUTS)


@pytest.mark.parametrize("damage", ["user's own summary.json", "user's own report.html"])
def test_a_folder_that_only_looks_like_a_result_is_neither_skipped_nor_replaced(
    tiff_slide: LayoutSlide, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """A summary.json was all `is_finished` checked: --overwrite replaced a user's folder that
    held one (from a bad-input hunt)."""
    out = tmp_path / "out"
    folder = out / "layout"
    folder.mkdir(parents=True)
    if damage == "user's own summary.json":
        (folder / "summary.json").write_text('{"my": "own notes"}\n')
    else:
        (folder / "report.html").write_text("<p>my own report</p>\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for extra in ([], ["--overwrite"]):
        assert _run([str(tiff_slide.path), "--out", str(out), "--stride-px", "96", *extra]) == 2
        err = capsys.readouterr().err
        assert f"{folder} exists but holds no finished slide result" in err, err
        assert len(err.strip().splitlines()) == 1
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize("damage", ["emptied summary", "heatmap gone", "summary gone"])
def test_a_damaged_result_is_not_skipped_and_overwrite_redoes_it(
    tiff_result: Path,
    tiff_slide: LayoutSlide,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    """A damaged result was skipped as done with exit 0 (from a bad-input hunt); then it was
    refused even with --overwrite, though every file left in it was histodetect's own."""
    import shutil

    out = tmp_path / "out"
    folder = out / "layout"
    shutil.copytree(tiff_result, folder)
    if damage == "emptied summary":
        (folder / "summary.json").write_text("")
    elif damage == "heatmap gone":
        (folder / "heatmap.png").unlink()
    else:
        (folder / "summary.json").unlink()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    argv = [str(tiff_slide.path), "--out", str(out), "--stride-px", "96"]
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert f"{folder} holds an incomplete slide result" in err and "--overwrite redoes it" in err
    assert len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert _run([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(SLIDE_OUTPUTS)
    assert json.loads((folder / "summary.json").read_text())["stride_px"] == 96


def test_slides_done_before_an_interrupt_are_said(
    tiff_slide: LayoutSlide,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lines went out only after the last slide: a run interrupted on its second slide
    printed nothing of the first, whose folder it kept (from a bad-input hunt)."""
    import shutil

    import histodetect.slides.runner as runner

    real, calls = runner._one_slide, []

    def second_interrupted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_one_slide", second_interrupted)
    second = shutil.copy(tiff_slide.path, tmp_path / "second.tif")
    out = tmp_path / "out"
    assert _run([str(tiff_slide.path), str(second), "--out", str(out), "--stride-px", "96"]) == 130
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and said[0].startswith(f"{out / 'layout'}: ") and "tiles" in said[0]
    assert sorted(p.name for p in out.iterdir()) == ["layout"]


def test_a_bad_stride_is_one_sentence_for_many_slides(
    tiff_slide: LayoutSlide, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--stride-px 0 was checked per slide: the same error once per slide, counted as failed."""
    import shutil

    second = shutil.copy(tiff_slide.path, tmp_path / "second.tif")
    argv = [str(tiff_slide.path), str(second), "--out", str(tmp_path / "out"), "--stride-px", "0"]
    assert _run(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "histodetect slide: error: --stride-px must lie in 1..96 and differ from the 96 px tile "
        "by an even number (so cells are centred in tiles), got 0."
    ]
    assert "failed" not in captured.out and not (tmp_path / "out").exists()


@pytest.mark.parametrize("when", ["scoring", "writing"])
def test_interrupt_leaves_nothing(
    tiff_slide: LayoutSlide, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    import histodetect.slides.outputs as outputs
    from histodetect.inference.predictor import Predictor

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    if when == "scoring":
        monkeypatch.setattr(Predictor, "predict_pixels", interrupt)
    else:
        monkeypatch.setattr(outputs, "save_png", interrupt)
    out = tmp_path / "out"
    out.mkdir()
    assert _run([str(tiff_slide.path), "--out", str(out), "--stride-px", "96"]) == 130
    assert list(out.iterdir()) == []


# ----------------------------------------------------------------------------- bad inputs


def _bad_slide(kind: str, tmp: Path, tiff: Path) -> Path:
    glass = np.random.default_rng(0).integers(236, 246, size=(400, 500, 3), dtype=np.uint8)
    if kind == "text":
        (tmp / "notes.tif").write_text("not an image\n")
        return tmp / "notes.tif"
    if kind == "truncated":
        (tmp / "cut.tif").write_bytes(tiff.read_bytes()[:200_000])
        return tmp / "cut.tif"
    if kind == "vsi":
        (tmp / "scan.vsi").write_bytes(bytes(100))
        return tmp / "scan.vsi"
    if kind == "glass":
        return write_pyramid(tmp / "glass.tif", glass, 0.5, 2)
    if kind == "nores":
        return write_pyramid(tmp / "nores.tif", glass, None, 2)
    return tmp / "missing.svs"


@pytest.mark.parametrize(
    "kind, reader",
    [("float32.tif", "auto"), ("float32.tif", "tifffile"), ("uint16.tif", "auto"),
     ("uint16.tif", "tifffile"), ("uint16.png", "auto"), ("uint16.png", "pil"),
     ("rgb16.png", "pil")],
)  # fmt: skip
def test_slides_of_more_than_8_bits_are_refused_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, reader: str
) -> None:
    """From a bad-input hunt: OpenSlide called a float TIFF "truncated or corrupt" and read a
    16-bit TIFF as 8-bit in silence; Pillow clipped a 16-bit PNG to white ("shows no tissue")."""
    import tifffile

    tissue = np.random.default_rng(0).integers(0, 65536, size=(400, 400, 3), dtype=np.uint16)
    slide = tmp_path / kind
    if kind == "float32.tif":
        tifffile.imwrite(slide, (tissue / 65535).astype(np.float32), tile=(128, 128))
    elif kind == "uint16.tif":
        tifffile.imwrite(slide, tissue, tile=(128, 128), bigtiff=True)
    elif kind == "rgb16.png":
        save_png16_rgb(slide, tissue)
    else:
        Image.fromarray(tissue[..., 0]).save(slide)
    out = tmp_path / "out"
    assert _run([str(slide), "--out", str(out), "--mpp", "0.97", "--reader", reader]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"histodetect slide: error: {slide} has "), err
    # every reader in predict's words, with a libvips conversion that keeps the pixels: a
    # plain `vips cast uchar` (the advice before) clips every 16-bit value above 255 to white
    assert "; histodetect needs 8-bit RGB: convert it to 8 bits per channel first (e.g. " in err
    conversion = "vips linear IN T.v 255 0 --uchar" if "float" in kind else "uchar --shift"
    assert conversion in err and err.endswith("--tile --pyramid)."), err
    assert len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize(
    "kind, extra, message",
    [
        ("text", [], "{slide} is not a slide"),
        ("truncated", [], "{slide} is a TIFF file that cannot be read: truncated or corrupt"),
        ("vsi", [], "{slide} has an unsupported slide format (.vsi)"),
        ("glass", [], "{slide} shows no tissue"),
        ("nores", [], "{slide} records no resolution (microns per pixel); pass --mpp"),
        ("missing", [], "slide {slide} does not exist"),
        ("glass", ["--out", "{file}"], "--out {file} is a file"),
        ("glass", ["--out", "{file}/sub"], "--out {file}/sub cannot be written"),
        ("glass", ["--shard", "3/2"], "--shard '3/2' must be i/n"),
        ("glass", ["--stride-px", "31"], "--stride-px must lie in 1..96"),
        ("glass", ["--mpp", "0"], "--mpp 0.0 is not a microscope resolution"),
        # from a bad-input hunt: "{slide} records 90 µm/px", the user's --mpp, not the file's
        ("glass", ["--mpp", "90"], "--mpp 90 is 93x coarser than the model's 0.972 µm/px"),
    ],
)
def test_bad_input_is_one_sentence_and_leaves_nothing(
    tiff_slide: LayoutSlide,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    extra: list[str],
    message: str,
) -> None:
    slide = _bad_slide(kind, tmp_path, tiff_slide.path)
    file = tmp_path / "taken.txt"
    file.write_text("mine\n")
    out = tmp_path / "out"
    names = {"slide": str(slide), "file": str(file)}
    argv = [str(slide), "--out", str(out), *(a.format(**names) for a in extra)]
    assert _run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(**names) in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("histodetect slide: error: ")
    assert not out.exists() and file.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {slide.name, file.name} - {"missing.svs"}
    )


def test_out_inside_a_patch_store_is_refused(
    tiff_slide: LayoutSlide, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """slide wrote its folders into a store, which `ingest --overwrite` then refused to replace."""
    from imagefiles import make_synthetic_store

    store = tmp_path / "store"
    make_synthetic_store(store, n=8)
    before = sorted(p.name for p in store.iterdir())
    out = store / "slides"
    assert _run([str(tiff_slide.path), "--out", str(out), "--stride-px", "96"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--out {out} lies inside the patch store {store}" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in store.iterdir()) == before
