"""Metrics and calibration as pure functions, checked against hand computations."""

from pathlib import Path

import numpy as np
import pytest

from histodetect.errors import HistodetectError
from histodetect.evaluation.calibration import (
    choose_threshold,
    fit_temperature,
    parse_threshold_method,
    probabilities,
)
from histodetect.evaluation.metrics import (
    bootstrap_auc_ci,
    compute_auc,
    compute_metrics,
    expected_calibration_error,
    negative_log_likelihood,
    threshold_metrics,
)


def test_threshold_metrics_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.6, 0.2, 0.9, 0.4, 0.7, 0.8])
    m = threshold_metrics(labels, probs, 0.5)
    assert m["confusion_matrix"] == [[2, 1], [1, 3]]
    assert m["sensitivity"] == pytest.approx(3 / 4) and m["specificity"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(3 / 4) and m["accuracy"] == pytest.approx(5 / 7)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_auc_nll_ece() -> None:
    labels = np.array([0, 0, 1, 1])
    assert compute_auc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert compute_auc(np.array([1, 1]), np.array([0.2, 0.3])) is None
    assert negative_log_likelihood(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(
        np.log(2)
    )
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    calibrated = (rng.uniform(size=20000) < p).astype(int)
    assert expected_calibration_error(calibrated, p) < 0.02
    assert expected_calibration_error(np.zeros(100, int), np.full(100, 0.9)) == pytest.approx(0.9)
    # two bins by hand: [0.1, 0.1] with one positive (|0.5 - 0.1| x 0.5), [0.85] right (|1 - 0.85| x 0.5)
    two = expected_calibration_error(np.array([0, 1, 1, 1]), np.array([0.1, 0.1, 0.85, 0.85]))
    assert two == pytest.approx(0.5 * 0.4 + 0.5 * 0.15)
    assert np.isnan(expected_calibration_error(np.array([], int), np.array([])))


def test_bootstrap_interval_brackets_auc() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    probs = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 400), 0, 1)
    lo, hi = bootstrap_auc_ci(labels, probs, n_boot=300)  # type: ignore[misc]
    auc = compute_auc(labels, probs)
    assert auc is not None and lo < auc < hi and hi - lo < 0.15


def test_bootstrap_resamples_within_each_class() -> None:
    """From a review: one tumour among 100 patches raised IndexError when every resample missed
    it (an internal error), and few resamples gave an interval that excluded the estimate."""
    labels = np.r_[np.zeros(99, int), 1]
    probs = np.linspace(0, 1, 100)
    probs[-1] = 0.6
    for seed in range(20):  # unstratified, many of these drew no tumour at all
        interval = bootstrap_auc_ci(labels, probs, n_boot=1, seed=seed)
        assert interval is not None and 0.0 <= interval[0] == interval[1] <= 1.0
    rng = np.random.default_rng(2)
    labels = np.r_[np.zeros(150, int), np.ones(50, int)]
    probs = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 200), 0, 1)
    lo, hi = bootstrap_auc_ci(labels, probs, n_boot=200)  # type: ignore[misc]
    auc = compute_auc(labels, probs)
    assert auc is not None and lo < auc < hi


def test_compute_metrics_has_report_and_per_slide() -> None:
    labels = np.array([0, 1, 0, 1, 1, 0])
    probs = np.array([0.2, 0.9, 0.4, 0.6, 0.3, 0.1])
    m = compute_metrics(
        labels, probs, 0.5, slides=np.array(["a", "a", "b", "b", "c", "c"]), n_boot=50
    )
    assert (
        "tumour" in m["classification_report_text"]
        and m["classification_report"]["tumour"]["support"] == 3
    )
    slides = {row["slide"]: row for row in m["per_slide"]}
    assert slides["c"]["accuracy"] == pytest.approx(0.5) and slides["a"]["auc"] == pytest.approx(
        1.0
    )
    assert "per_slide" not in compute_metrics(
        labels, probs, 0.5, slides=np.array([""] * 6), n_boot=10
    )


def test_temperature_recovers_the_true_one() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 4, 20000)
    labels = (rng.uniform(size=20000) < 1 / (1 + np.exp(-logits / 2.0))).astype(int)
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.1)
    tta_logits = np.stack([logits] * 8, axis=1)
    assert fit_temperature(tta_logits, labels) == pytest.approx(2.0, rel=0.1)
    assert probabilities(tta_logits, 2.0) == pytest.approx(probabilities(logits, 2.0))


def test_threshold_rules() -> None:
    labels = np.array([0] * 50 + [1] * 50)
    probs = np.concatenate([np.linspace(0.0, 0.6, 50), np.linspace(0.4, 1.0, 50)])
    youden = choose_threshold(labels, probs, "youden")
    assert 0.38 <= youden <= 0.62  # anywhere in the overlap of the two classes
    high_sens = choose_threshold(labels, probs, "sensitivity=0.98")
    assert (probs[labels == 1] >= high_sens).mean() >= 0.98 and high_sens < youden
    assert choose_threshold(labels, probs, "0.5") == 0.5
    assert parse_threshold_method("sensitivity") == ("sensitivity", 0.95)
    with pytest.raises(HistodetectError, match=r"youden, sensitivity=0\.95 or a number"):
        parse_threshold_method("best")
    with pytest.raises(HistodetectError, match="both classes"):
        choose_threshold(np.ones(5, int), np.linspace(0, 1, 5), "youden")


def test_probabilities_of_extreme_logits_are_exact_and_silent() -> None:
    """1 / (1 + exp(-z)) overflowed below z = -709 and printed numpy's RuntimeWarning (with a
    source line) into predict's output for a model with huge logits (from a bad-input hunt)."""
    import warnings

    logits = np.array([-1e6, -800.0, -30.0, 0.0, 2.5, 800.0, 1e6])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = probabilities(logits, 1.0)
    np.testing.assert_allclose(p[2:5], 1 / (1 + np.exp(-logits[2:5])), rtol=1e-12, atol=1e-300)
    assert p[0] == 0.0 and p[-1] == 1.0 and np.all(np.diff(p) >= 0)
    tta = probabilities(np.array([[0.0, 2.0], [-1e4, 1e4]]), 2.0)
    np.testing.assert_allclose(tta, [(0.5 + 1 / (1 + np.exp(-1.0))) / 2, 0.5])


def test_a_collapsed_model_gets_no_threshold_and_a_temperature_at_its_limit_is_said() -> None:
    """From a review: constant logits on balanced labels gave T = 20.085 (the bound) in silence
    and a Youden threshold of 1.0 (every patch called normal), saved as a calibration."""
    from histodetect.evaluation.calibration import temperature_warning

    labels = np.r_[np.zeros(50, int), np.ones(50, int)]
    constant = np.full(100, 0.3)
    temperature = fit_temperature(constant, labels)
    assert "upper limit" in (temperature_warning(temperature) or "")
    with pytest.raises(HistodetectError, match="same probability"):
        choose_threshold(labels, probabilities(constant, temperature), "youden")
    informative = np.r_[np.full(50, -2.0), np.full(50, 2.0)] + np.linspace(-3, 3, 100)
    assert temperature_warning(fit_temperature(informative, labels)) is None


def test_a_calibration_fitted_with_other_tta_is_noted(tmp_path: Path) -> None:
    """From a review: a threshold and temperature fitted on the mean of 8 views were applied to
    single views (and the reverse) in silence: nothing read the calibration's `tta` back."""
    from histodetect.evaluation.calibration import tta_mismatch_note

    fitted = {"calibration": {"tta": False, "temperature": 1.1, "threshold": 0.46}}
    assert tta_mismatch_note(fitted, False, tmp_path / "m.pt") is None
    note = tta_mismatch_note(fitted, True, tmp_path / "m.pt")
    assert note is not None and "calibrated without --tta and runs with it" in note
    assert "calibrate a copy --tta" in note
    assert tta_mismatch_note({}, True, tmp_path / "m.pt") is None  # nothing said: no note


def test_the_slide_interval_is_wider_when_a_slide_s_patches_are_alike() -> None:
    """From a review: the interval resampled patches even where slides are known, so with
    patches of one slide alike it was too narrow for new slides. Each slide here has its own
    offset of the scores (a slide effect), so resampling slides must widen the interval."""
    from histodetect.evaluation.metrics import bootstrap_auc_ci, slide_bootstrap_auc_ci

    rng = np.random.default_rng(0)
    n_slides, per_slide = 12, 100
    slides = np.repeat([f"s{k}" for k in range(n_slides)], per_slide)
    labels = rng.integers(0, 2, n_slides * per_slide)
    offset = np.repeat(rng.normal(0, 1.5, n_slides), per_slide)
    probs = 1 / (1 + np.exp(-(2 * labels - 1 + offset + rng.normal(0, 1, len(labels)))))
    lo_p, hi_p = bootstrap_auc_ci(labels, probs, n_boot=300)
    lo_s, hi_s = slide_bootstrap_auc_ci(labels, probs, slides, n_boot=300)
    assert hi_s - lo_s > 1.5 * (hi_p - lo_p)
    m = compute_metrics(labels, probs, 0.5, slides=slides, n_boot=100)
    lo, hi = m["auc_ci95_slides"]
    assert lo < m["auc"] < hi
    few = np.where(np.isin(slides, ["s0", "s1"]), slides, "s2")  # 3 slides: no slide interval
    assert compute_metrics(labels, probs, 0.5, slides=few, n_boot=20)["auc_ci95_slides"] is None
    assert "auc_ci95_slides" not in compute_metrics(labels, probs, 0.5, n_boot=20)
