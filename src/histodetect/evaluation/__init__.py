"""Evaluation: metrics (pure functions), calibration and thresholds, the HTML report."""
