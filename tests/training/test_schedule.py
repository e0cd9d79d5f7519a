"""Learning-rate schedules: shapes, and no failure past the planned end (resumed runs)."""

import pytest

from histodetect.training.schedule import lr_factor


def test_onecycle_rises_then_decays() -> None:
    values = [lr_factor(s, 100, "onecycle") for s in range(101)]
    assert values[0] == pytest.approx(1 / 25)
    assert max(values) == pytest.approx(1.0) and values.index(max(values)) == 30
    assert values[-1] == pytest.approx(1e-4)
    assert lr_factor(150, 100, "onecycle") == pytest.approx(1e-4)


def test_cosine_warms_up_linearly() -> None:
    assert lr_factor(0, 100, "cosine", 0.1) == pytest.approx(0.01)
    assert lr_factor(5, 100, "cosine", 0.1) == pytest.approx(0.505)
    assert lr_factor(10, 100, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, "cosine", 0.1) == pytest.approx(0.5, abs=1e-3)
    assert lr_factor(7, 100, "constant") == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(1, 10, "linear")
