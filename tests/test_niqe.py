"""NIQE: equal to BasicSR's implementation on the images of ../shared/data, and its building blocks.

The reference numbers in tests/data/niqe_reference.json come from BasicSR's own code run in a
scratch environment (bench/niqe_reference.py says how, and regenerates them).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lle_cli import metrics
from lle_cli.imageio import read_rgb8
from lle_cli.metrics import imresize_half, niqe, y_channel

from .conftest import shared_path

REFERENCE = Path(__file__).parent / "data" / "niqe_reference.json"
TOLERANCE = 0.01  # the issue's bound; the implementation agrees to about 1e-12


def _reference() -> dict:
    return json.loads(REFERENCE.read_text())["images"]


def _check(keys: list[str]) -> dict[str, float]:
    """|lle - BasicSR| per image, after checking lle decodes the same pixels the reference measured."""
    data = shared_path("data")
    ref = _reference()
    diffs = {}
    for key in keys:
        rgb = read_rgb8(data / key)
        # a decoder difference would otherwise look like a metric difference
        assert hashlib.sha256(rgb.tobytes()).hexdigest() == ref[key]["rgb_sha256"], f"{key}: lle decodes other pixels than the reference did"
        diffs[key] = abs(niqe(rgb) - ref[key]["niqe"])
    return diffs


def test_matches_basicsr_on_one_image_of_each_set() -> None:
    first: dict[str, str] = {}
    for key in _reference():
        first.setdefault(key.rsplit("/", 1)[0], key)
    diffs = _check(list(first.values()))
    assert max(diffs.values()) < TOLERANCE, diffs


@pytest.mark.slow
def test_matches_basicsr_on_every_image_of_shared_data() -> None:
    diffs = _check(list(_reference()))
    worst = {s: max(d for k, d in diffs.items() if k.startswith(s + "/")) for s in {k.rsplit("/", 1)[0] for k in diffs}}
    assert len(diffs) >= 130 and max(worst.values()) < TOLERANCE, worst


def test_reference_covers_the_sets_the_issue_names() -> None:
    sets = {k.rsplit("/", 1)[0] for k in _reference()}
    assert {"lol_eval15/low", "lol_eval15/high", "lowlight_real/LIME", "backlit", "positives/Kodak24", "positives/CBSD68"} <= sets


def test_pristine_parameters_are_packaged_with_their_notice() -> None:
    params = Path(metrics.__file__).with_name("data") / "niqe_pris_params.npz"
    notice = (params.parent / "NOTICE").read_text()
    sha = hashlib.sha256(params.read_bytes()).hexdigest()
    assert sha == "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296" and sha in notice
    assert "Apache License, Version 2.0" in notice and "BasicSR" in notice
    mu, cov, window = metrics._niqe_model()
    assert mu.shape == (1, 36) and cov.shape == (36, 36) and window.shape == (7, 7)


# ---------------------------------------------------------------------------------------------
# building blocks, against their definitions


def test_y_channel_is_matlab_rgb2ycbcr_rounded(rng) -> None:
    rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    x = rgb.astype(np.float64) / 255
    expect = np.round(16 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2])
    y = y_channel(rgb)
    assert y.dtype == np.float32 and np.array_equal(y, expect)
    assert y_channel(np.zeros((2, 2, 3), np.uint8)).max() == 16 and y_channel(np.full((2, 2, 3), 255, np.uint8)).min() == 235


def test_imresize_half_keeps_constants_and_ramps() -> None:
    # MATLAB's antialiased bicubic kernel has weights summing to 1 and reproduces linear functions
    flat = np.full((40, 60), 0.37, np.float32)
    out = imresize_half(flat)
    assert out.shape == (20, 30) and np.allclose(out, 0.37, atol=1e-6)
    cols = np.arange(60, dtype=np.float32) / 100
    ramp = np.tile(cols, (40, 1))
    out = imresize_half(ramp)
    # output pixel j covers input pixels 2j and 2j+1: its value is their mean, away from the mirrored border
    expect = (cols[0::2] + cols[1::2]) / 2
    assert np.allclose(out[:, 3:-3], expect[3:-3], atol=1e-6)


def test_aggd_fit_recovers_a_gaussian(rng) -> None:
    # a Gaussian is the AGGD of shape 2 with equal left and right scales (the std here, 1.5)
    x = (rng.standard_normal((2, 200_000)) * 1.5).astype(np.float32)
    shape, left, right, _ = metrics._aggd_fit(x)
    assert np.allclose(shape, 2.0, atol=0.03) and np.allclose(left, 1.5 * math.sqrt(2), rtol=0.02)
    assert np.allclose(left, right, rtol=0.02)


# ---------------------------------------------------------------------------------------------
# inputs


def test_small_flat_grey_and_wrong_inputs(rng) -> None:
    with pytest.raises(ValueError, match="two 96x96 blocks; this image is 150x100"):
        niqe(np.zeros((100, 150, 3), np.uint8))
    assert math.isnan(niqe(np.full((96, 192, 3), 128, np.uint8)))  # nothing to fit in a flat image
    texture = rng.integers(0, 256, (192, 192, 3), dtype=np.uint8)
    assert math.isfinite(niqe(texture))
    grey = y_channel(texture)
    assert niqe(grey) == niqe(texture)  # a grey (H, W) image is measured as it is
    assert niqe(texture.astype(np.float64)) == niqe(texture)  # floats on the 0-255 scale
    with pytest.raises(ValueError, match="uint8"):
        niqe(texture.astype(np.uint16))
    with pytest.raises(ValueError, match="shape"):
        niqe(texture[..., :2])
    assert niqe(np.pad(texture, ((5, 5), (5, 5), (0, 0))), crop_border=5) == niqe(texture)
