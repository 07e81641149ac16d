"""Choosing the OOD threshold from validated real photos (lle_cli.ood_calibration)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lle_cli.ood_calibration import calibrate_threshold, failed


def test_the_threshold_is_where_the_fitted_error_rate_reaches_error_max() -> None:
    # error rate = 10 ** (0.5 * score - 6): reaches 1e-2 at score 8
    scores = np.array([2.0, 4.0, 6.0, 7.0, 9.0, 10.0])
    errors = 10 ** (0.5 * scores - 6)
    cal = calibrate_threshold(scores, errors, [0] * 6)
    assert cal.threshold == pytest.approx(8.0, abs=1e-9)
    assert cal.failures == 2 and cal.flagged == 2 and cal.true_positives == 2 and cal.balanced_accuracy == pytest.approx(1.0)
    assert cal.spearman == pytest.approx(1.0)


def test_a_non_finite_sample_counts_as_a_failure_and_pulls_the_threshold_down() -> None:
    scores = [2.0, 4.0, 6.0, 8.0]
    clean = calibrate_threshold(scores, [1e-5, 1e-5, 1e-4, 1e-4], [0, 0, 0, 0])
    broken = calibrate_threshold(scores, [1e-5, 1e-5, 1e-4, 1e-4], [0, 0, 0, 3])
    assert broken.failures == 1 and broken.threshold < clean.threshold and broken.true_positives == 1
    assert failed(0.02, 0) and failed(0.0, 1) and failed(float("nan"), 0) and not failed(0.005, 0)


def test_without_a_rising_trend_nothing_seen_is_flagged() -> None:
    cal = calibrate_threshold([10.0, 20.0, 30.0], [0.003, 0.002, 0.001], [0, 0, 0])
    assert cal.threshold > 30.0 and cal.flagged == 0 and cal.failures == 0 and cal.balanced_accuracy is None
    assert math.isfinite(cal.threshold)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        calibrate_threshold([], [], [])
    with pytest.raises(ValueError):
        calibrate_threshold([1.0, float("inf")], [0.0, 0.0], [0, 0])
    with pytest.raises(ValueError):
        calibrate_threshold([1.0, 2.0], [0.0, 0.0], [0, 0], error_max=0.0)
