"""Choosing the OOD threshold from validated real photos (lle_cli.ood_calibration)."""

from __future__ import annotations

import pytest

from lle_cli.ood_calibration import calibrate_threshold, failed


def test_the_threshold_separates_failing_from_working_images() -> None:
    scores = [3.0, 4.0, 5.0, 9.0, 10.0, 12.0]
    errors = [0.0, 0.001, 0.002, 0.05, 0.2, 0.0]
    nonfinite = [0, 0, 0, 0, 0, 3]  # the last one fails by Inf samples, not by error pixels
    cal = calibrate_threshold(scores, errors, nonfinite)
    assert 5.0 < cal.threshold < 9.0
    assert cal.failures == 3 and cal.flagged == 3 and cal.true_positives == 3
    assert cal.balanced_accuracy == pytest.approx(1.0)


def test_overlapping_classes_pick_the_best_balanced_accuracy() -> None:
    scores = [1, 2, 3, 4, 5, 6, 7, 8]
    errors = [0, 0, 0.5, 0, 0, 0.5, 0.5, 0.5]
    cal = calibrate_threshold(scores, errors, [0] * 8)
    assert 5 < cal.threshold < 6  # flags 6, 7, 8: 3 of 4 failures, no false alarm
    assert cal.balanced_accuracy == pytest.approx(0.875)


def test_without_failures_nothing_seen_is_flagged() -> None:
    cal = calibrate_threshold([10.0, 20.0, 30.0], [0.0, 0.001, 0.0], [0, 0, 0])
    assert cal.threshold > 30.0 and cal.flagged == 0 and cal.failures == 0 and cal.balanced_accuracy is None


def test_failure_rule_and_bad_input() -> None:
    assert failed(0.02, 0) and failed(0.0, 1) and failed(float("nan"), 0) and not failed(0.005, 0)
    with pytest.raises(ValueError):
        calibrate_threshold([], [], [])
    with pytest.raises(ValueError):
        calibrate_threshold([1.0, float("inf")], [0.0, 0.0], [0, 0])
