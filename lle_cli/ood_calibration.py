"""Calibrating the OOD threshold on real photos, so that a warning means the samples may fail.

A threshold taken as a percentile of the training images' scores says only "unlike the training
data". Real photos are all somewhat unlike a model's training data, yet most of them sample fine:
with the shipped demonstration statistics every real low-light photo was flagged. What a user needs
to know is whether *this* photo's samples are likely to break (Hong et al., ICCV 2023: the score is
useful because it predicts exploding inverses). So the threshold is chosen on photos whose samples
were actually drawn and checked (``lle score-ood --validate``):

* an image *fails* when any of its tau-1 samples is non-finite or more than ``error_max`` of its
  values are error pixels (non-finite or outside [-0.5, 1.5], as the paper counts them);
* the threshold is the score that best separates failing from working images (the highest balanced
  accuracy; among equal ones, the highest threshold, so fewer false alarms);
* with no failing image in the calibration set, the threshold is just above the highest score seen:
  nothing like these photos is flagged, and only inputs further out than all of them are.

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
    error_max: float = ERROR_MAX, margin: float = 0.05,
) -> Calibration:
    """The threshold that best predicts failing samples on these validated images (see the module doc).

    ``margin``: without failures, the threshold sits this fraction above the highest score.
    """
    s = np.asarray(scores, dtype=np.float64)
    e = np.asarray(error_probabilities, dtype=np.float64)
    nf = np.asarray(nonfinite_samples, dtype=np.int64)
    if s.size == 0 or not (s.size == e.size == nf.size):
        raise ValueError("calibration needs one score, error probability and non-finite count per image")
    if not np.isfinite(s).all():
        raise ValueError("calibration scores must be finite")
    fail = np.array([failed(float(x), int(k), error_max) for x, k in zip(e, nf)])
    n_fail = int(fail.sum())
    rho = _spearman(s, np.nan_to_num(e, nan=1.0))
    if n_fail == 0 or n_fail == s.size:
        # one class only: nothing to separate; flag nothing seen here (or everything, if all failed)
        t = float(s.max() * (1 + margin) + margin) if n_fail == 0 else float(s.min() * (1 - margin) - margin)
        flagged = int((s > t).sum())
        return Calibration(t, int(s.size), n_fail, flagged, int((s > t)[fail].sum()), None, rho, error_max)
    order = np.unique(s)
    candidates = np.concatenate([[order[0] - 1.0], (order[:-1] + order[1:]) / 2, [order[-1] + 1.0]])
    best_t, best_acc = None, -1.0
    for t in candidates:
        above = s > t
        tpr = float(above[fail].mean())
        tnr = float((~above[~fail]).mean())
        acc = 0.5 * (tpr + tnr)
        if acc > best_acc + 1e-12 or (abs(acc - best_acc) <= 1e-12 and t > best_t):
            best_t, best_acc = float(t), acc
    above = s > best_t
    return Calibration(best_t, int(s.size), n_fail, int(above.sum()), int(above[fail].sum()), best_acc, rho, error_max)
