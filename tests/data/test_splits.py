"""Splits: official when given, slide-grouped when slides are known, stratified with a warning."""

from pathlib import Path

import numpy as np
import pytest

from histodetect.data.splits import (
    OptimisticSplitWarning,
    check_no_leak,
    choose_split,
    slide_grouped_split,
    stratified_split,
)
from histodetect.data.writer import StoreWriter
from histodetect.errors import HistodetectError


def _store(
    tmp_path: Path,
    rng: np.random.Generator,
    splits: list[str],
    slides: list[str],
    dup: bool = False,
):
    n = len(splits)
    pixels = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    if dup:
        pixels[1] = pixels[0]
    with StoreWriter(tmp_path / "s") as w:
        w.add(pixels, [i % 2 for i in range(n)], splits, slides, ["o"] * n, [""] * n)
        return w.finish({})


def test_stratified_split_keeps_balance_and_is_seeded() -> None:
    labels = np.array([0] * 60 + [1] * 40)
    t, v = stratified_split(labels, 0.2, seed=3)
    assert len(v) == 20 and labels[v].sum() == 8 and len(np.intersect1d(t, v)) == 0
    assert np.array_equal(v, stratified_split(labels, 0.2, seed=3)[1])
    assert not np.array_equal(v, stratified_split(labels, 0.2, seed=4)[1])


def test_slide_grouped_split_never_shares_a_slide() -> None:
    slides = np.array([f"s{i // 10}" for i in range(100)])
    labels = np.array([(i // 10) % 2 for i in range(100)])
    t, v = slide_grouped_split(labels, slides, 0.2, seed=0)
    assert set(slides[t]).isdisjoint(slides[v]) and len(v) > 0 and len(t) > 0
    with pytest.raises(HistodetectError, match="at least 2 slides"):
        slide_grouped_split(labels, np.array(["one"] * 100), 0.2, seed=0)


def test_choose_split_prefers_official(tmp_path: Path, rng: np.random.Generator) -> None:
    store = _store(tmp_path, rng, ["train"] * 8 + ["valid"] * 4, [""] * 12)
    split = choose_split(store)
    assert split.method == "official" and split.slide_disjoint
    assert split.valid.tolist() == list(range(8, 12))


def test_choose_split_reads_old_split_spellings(tmp_path: Path, rng: np.random.Generator) -> None:
    # A store written before ingest made split names canonical may hold `Train`/`Val`/`TEST`:
    # its validation and test patches must not be pooled into training.
    store = _store(tmp_path, rng, ["Train"] * 8 + ["Val"] * 4 + ["TEST"] * 2, [""] * 14)
    split = choose_split(store)
    assert split.method == "official"
    assert split.train.tolist() == list(range(8)) and split.valid.tolist() == list(range(8, 12))


def test_choose_split_groups_by_slide(tmp_path: Path, rng: np.random.Generator) -> None:
    slides = [f"s{i % 6}" for i in range(30)]
    store = _store(tmp_path, rng, ["train"] * 30, slides)
    split = choose_split(store, valid_fraction=0.3)
    assert split.method == "slide-grouped"
    m = store.manifest
    assert set(m.slides[split.train]).isdisjoint(m.slides[split.valid])


def test_choose_split_warns_when_random(tmp_path: Path, rng: np.random.Generator) -> None:
    store = _store(tmp_path, rng, ["train"] * 20 + ["test"] * 4, [""] * 24)
    with pytest.warns(OptimisticSplitWarning, match="optimistic"):
        split = choose_split(store, valid_fraction=0.25)
    assert split.method == "stratified-random" and not split.slide_disjoint
    assert max(split.train.max(), split.valid.max()) < 20, "the test split must not be used"


def test_leak_check_names_the_count(tmp_path: Path, rng: np.random.Generator) -> None:
    store = _store(tmp_path, rng, ["train"] * 6, [""] * 6, dup=True)
    check_no_leak(store, np.array([0, 2]), np.array([3, 4]))
    with pytest.raises(HistodetectError, match="leak: 1 patch appears in both"):
        check_no_leak(store, np.array([0, 2]), np.array([1, 4]))


def test_tiny_store_splits_with_every_class_or_says_why(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    store = _store(tmp_path, rng, [""] * 5, [""] * 5)  # 3 normal, 2 tumour, no valid split
    with pytest.warns(OptimisticSplitWarning):
        split = choose_split(store, valid_fraction=0.1)
    assert sorted(store.manifest.labels[split.valid].tolist()) == [0, 1]
    with pytest.raises(HistodetectError, match=r"too few labelled patches.*2 patches of class 1"):
        choose_split(store, valid_fraction=0.9)


def _store_with_copies(tmp_path: Path, rng: np.random.Generator, slides: list[str]):
    """40 patches, the last 10 exact copies of the first 10 (as PCam's train folder has)."""
    pixels = rng.integers(0, 256, (40, 96, 96, 3), dtype=np.uint8)
    pixels[30:] = pixels[:10]
    labels = [i % 2 for i in range(30)] + [i % 2 for i in range(10)]
    with StoreWriter(tmp_path / "s") as w:
        w.add(pixels, labels, ["train"] * 40, slides, ["o"] * 40, [""] * 40)
        return w.finish({})


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("slides", ["none", "copies on other slides"])
def test_a_split_drawn_here_never_puts_copies_on_both_sides(
    tmp_path: Path, rng: np.random.Generator, seed: int, slides: str
) -> None:
    """From a review: the random (and slide-grouped) split drew rows, not patches, so copies
    within one folder landed on both sides and the leak check refused a store whose data were
    fine (for every seed); the copies are now left out of validation."""
    names = (
        [""] * 40
        if slides == "none"
        else [f"s{i % 5}" for i in range(30)] + [f"s{(i + 1) % 5}" for i in range(10)]
    )
    store = _store_with_copies(tmp_path, rng, names)
    with pytest.warns(UserWarning) as caught:
        split = choose_split(store, valid_fraction=0.25, seed=seed)
    ids = store.manifest.ids
    assert not np.intersect1d(ids[split.train], ids[split.valid]).size
    assert len(split.train) + len(split.valid) <= 40 and len(split.valid) >= 4
    left_out = 40 - len(split.train) - len(split.valid)
    copy_notes = [w for w in caught if "of training patches (the same pixels)" in str(w.message)]
    assert (left_out > 0) == bool(copy_notes)
    if slides != "none":
        assert split.method == "slide-grouped"
        m = store.manifest
        assert set(m.slides[split.train]).isdisjoint(m.slides[split.valid])


def test_an_official_split_whose_sides_share_slides_is_not_called_slide_disjoint(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """From a review: any store with a valid split was called slide-disjoint, so validation on
    train's own slides ran with no optimistic warning."""
    shared = _store(
        tmp_path / "a", rng, ["train"] * 8 + ["valid"] * 4, [f"s{i % 2}" for i in range(12)]
    )
    assert not choose_split(shared).slide_disjoint
    apart = _store(tmp_path / "b", rng, ["train"] * 8 + ["valid"] * 4, ["s0"] * 8 + ["s1"] * 4)
    assert choose_split(apart).slide_disjoint


def test_a_drawn_validation_split_of_copies_only_is_refused_in_one_sentence(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """The slide the grouped split holds out has only copies of training patches: leaving them
    out would leave no validation at all, so the store is refused with what to do."""
    names = [f"s{i % 5}" for i in range(30)] + ["s9"] * 10
    store = _store_with_copies(tmp_path, rng, names)
    for seed in range(20):
        _, v = slide_grouped_split(store.manifest.labels, store.manifest.slides, 0.25, seed)
        if set(store.manifest.slides[v]) == {"s9"}:
            break
    else:
        pytest.skip("no seed held out slide s9 alone")
    with pytest.raises(HistodetectError, match=r"every validation patch .* --drop-duplicates"):
        choose_split(store, valid_fraction=0.25, seed=seed)
