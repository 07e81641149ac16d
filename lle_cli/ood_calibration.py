"""Calibrating the OOD threshold on real photos, so that a warning means the samples may fail.

A threshold taken as a percentile of the training images' scores says only "unlike the training
data". Real photos are all somewhat unlike a model's training data, yet most of them sample fine:
with the shipped demonstration statistics every real low-light photo was flagged. What a user needs
to know is whether *this* photo's samples are likely to break (Hong et al., ICCV 2023: the score is
useful because it predicts exploding inverses). So the threshold is chosen on photos whose samples
were actually drawn and checked (``lle score-ood --validate``):

* an image *fails* when any of its tau-1 samples is non-finite or more than ``error_max`` of its
  values are error pixels (non-finite or outside [-0.5, 1.5], as the paper counts them);
* the error-pixel rate grows with the score (the paper's finding; a non-finite sample counts as a
  rate of 1), so ``log10(rate)`` is fitted as a straight line in the score, and the threshold is the
  score where the fitted rate reaches ``error_max``: above it, an input is expected to fail. A fit
  rather than a cut between the failing and the working photos, because failures are rare on real
  photos (one in 64 for the demonstration flow), and one failure cannot place a threshold alone;
* with no rising trend, nothing can be predicted: the threshold goes just above the highest score
  seen, so only inputs further out than every calibration photo are flagged.

The balanced accuracy of the chosen threshold (failing vs working photos) is reported with it.
Pure functions; ``lle_cli.ood`` applies the result to a statistics file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Calibration", "ERROR_MAX", "failed", "calibrate_threshold"]

ERROR_MAX = 0.01  # error-pixel fraction above which a sample set counts as failed


@dataclass(frozen=True)
class Calibration:
    threshold: float
    images: int
    failures: int
    flagged: int  # calibration images above the threshold
    true_positives: int  # failing images above it
    balanced_accuracy: float | None  # None without both classes
    spearman: float | None  # score vs error probability over the images
    error_max: float

    def to_dict(self) -> dict:
        return asdict(self)


def failed(error_probability: float, nonfinite_samples: int, error_max: float = ERROR_MAX) -> bool:
    return nonfinite_samples > 0 or not math.isfinite(error_probability) or error_probability > error_max


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def calibrate_threshold(
    scores: Sequence[float], error_probabilities: Sequence[float], nonfinite_samples: Sequence[int], *,
    error_max: float = ERROR_MAX, margin: float = 0.05, floor: float = 1e-5,
) -> Calibration:
    """The score at which samples are expected to start failing (see the module doc).

    ``floor``: rates below it (0 included) count as ``floor`` in the log fit. ``margin``: without a
    rising trend, the threshold sits this fraction above the highest score.
    """
    s = np.asarray(scores, dtype=np.float64)
    e = np.asarray(error_probabilities, dtype=np.float64)
    nf = np.asarray(nonfinite_samples, dtype=np.int64)
    if s.size == 0 or not (s.size == e.size == nf.size):
        raise ValueError("calibration needs one score, error probability and non-finite count per image")
    if not np.isfinite(s).all():
        raise ValueError("calibration scores must be finite")
    if not 0 < error_max < 1:
        raise ValueError("error_max must be a fraction between 0 and 1")
    fail = np.array([failed(float(x), int(k), error_max) for x, k in zip(e, nf)])
    rate = np.where((nf > 0) | ~np.isfinite(e), 1.0, np.clip(np.nan_to_num(e, nan=1.0), floor, 1.0))
    y = np.log10(rate)
    rho = _spearman(s, rate)
    slope = intercept = 0.0
    if s.size >= 2 and np.ptp(s) > 0:
        slope, intercept = (float(v) for v in np.polyfit(s, y, 1))
    if slope > 0:
        t = (math.log10(error_max) - intercept) / slope
        t = float(min(max(t, s.min() - margin), s.max() * (1 + margin) + margin))
    else:
        t = float(s.max() * (1 + margin) + margin)
    above = s > t
    n_fail = int(fail.sum())
    acc = None
    if 0 < n_fail < s.size:
        acc = 0.5 * (float(above[fail].mean()) + float((~above[~fail]).mean()))
    return Calibration(t, int(s.size), n_fail, int(above.sum()), int(above[fail].sum()), acc, rho, error_max)
