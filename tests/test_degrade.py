"""The synthetic low-light model (lle_cli.degrade) and `lle train synth-pairs`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lle_cli.cli.main import main
from lle_cli.degrade import DegradeParams, DegradeSpec, degrade, sample_params, write_synthetic_pairs
from lle_cli.errors import OutputExistsError


def _flat(value: float, size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.float64)


def test_noise_free_degradation_is_the_documented_formula() -> None:
    x = np.linspace(0, 1, 300).reshape(10, 10, 3)
    p = DegradeParams(exposure=0.05, shot=0.0, read_sigma=0.0, gamma=2.4)
    want = np.round(np.clip(0.05 * x**2.2, 0, 1) ** (1 / 2.4) * 255).astype(np.uint8)
    np.testing.assert_array_equal(degrade(x, p, np.random.default_rng(0)), want)


def test_noise_variance_is_shot_plus_read() -> None:
    # gamma 1 keeps the linear domain: var(N) = a * E + b (plus 8-bit rounding, 1/12 of a code squared)
    k, a, s = 0.5, 1e-3, 0.01
    x = _flat((0.25 / k) ** (1 / 2.2), 256)  # E = k * x ** 2.2 = 0.25
    y = degrade(x, DegradeParams(k, a, s, gamma=1.0), np.random.default_rng(1)).astype(np.float64) / 255
    var = a * 0.25 + s**2 + (1 / 255) ** 2 / 12
    assert abs(y.mean() - 0.25) < 0.002
    assert y.var() == pytest.approx(var, rel=0.05)


def test_darker_exposure_gives_darker_images_and_same_seed_same_pair() -> None:
    x = np.random.default_rng(2).random((32, 32, 3))
    means = [degrade(x, DegradeParams(k, 1e-3, 1e-3, 2.2), np.random.default_rng(3)).mean() for k in (0.005, 0.02, 0.08)]
    assert means[0] < means[1] < means[2] < x.mean() * 255
    a = degrade(x, DegradeParams(0.02, 1e-3, 1e-3, 2.2), np.random.default_rng(3))
    b = degrade(x, DegradeParams(0.02, 1e-3, 1e-3, 2.2), np.random.default_rng(3))
    c = degrade(x, DegradeParams(0.02, 1e-3, 1e-3, 2.2), np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_jpeg_step_changes_the_image() -> None:
    x = np.random.default_rng(5).random((32, 32, 3))
    plain = degrade(x, DegradeParams(0.05, 1e-4, 1e-4, 2.2), np.random.default_rng(0))
    jpeg = degrade(x, DegradeParams(0.05, 1e-4, 1e-4, 2.2, jpeg_quality=30), np.random.default_rng(0))
    assert jpeg.shape == plain.shape and jpeg.dtype == np.uint8 and not np.array_equal(plain, jpeg)


def test_parameters_stay_in_their_ranges() -> None:
    spec = DegradeSpec(jpeg_probability=0.5)
    rng = np.random.default_rng(0)
    ps = [sample_params(rng, spec) for _ in range(200)]
    assert all(spec.exposure_range[0] <= p.exposure <= spec.exposure_range[1] for p in ps)
    assert all(spec.gamma_range[0] <= p.gamma <= spec.gamma_range[1] for p in ps)
    assert all(spec.read_sigma_range[0] <= p.read_sigma <= spec.read_sigma_range[1] for p in ps)
    with_jpeg = sum(p.jpeg_quality is not None for p in ps)
    assert 60 < with_jpeg < 140
    with pytest.raises(ValueError):
        DegradeSpec(exposure_range=(0.5, 2.0))
    with pytest.raises(ValueError):
        degrade(np.zeros((4, 4)), ps[0], rng)


def _sources(folder, rng, n: int = 2):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_synthetic_pairs_are_reproducible_and_independent(tmp_path, rng) -> None:
    src = _sources(tmp_path / "src", rng)
    recs = write_synthetic_pairs(src, tmp_path / "a", variants=2, seed=7)
    names = sorted(p.name for p in (tmp_path / "a" / "low").iterdir())
    assert names == ["img0_v0.png", "img0_v1.png", "img1_v0.png", "img1_v1.png"] == sorted(r["name"] for r in recs)
    assert sorted(p.name for p in (tmp_path / "a" / "high").iterdir()) == names
    high = np.asarray(Image.open(tmp_path / "a" / "high" / "img1_v0.png"))
    assert np.array_equal(high, np.asarray(Image.open(src / "img1.png")))
    low = np.asarray(Image.open(tmp_path / "a" / "low" / "img1_v0.png"))
    assert low.shape == high.shape and low.mean() < high.mean()
    manifest = json.loads((tmp_path / "a" / "pairs.json").read_text())
    assert manifest["seed"] == 7 and len(manifest["pairs"]) == 4

    # another image added: the existing pairs keep their bytes; the variants of one image differ
    Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(src / "extra.png")
    write_synthetic_pairs(src, tmp_path / "b", variants=2, seed=7)
    for n in names:
        assert (tmp_path / "a" / "low" / n).read_bytes() == (tmp_path / "b" / "low" / n).read_bytes()
    assert (tmp_path / "a" / "low" / "img0_v0.png").read_bytes() != (tmp_path / "a" / "low" / "img0_v1.png").read_bytes()
    with pytest.raises(OutputExistsError):
        write_synthetic_pairs(src, tmp_path / "a", variants=1, seed=7)


def test_synth_pairs_command(tmp_path, rng, capsys) -> None:
    src = _sources(tmp_path / "src", rng, n=1)
    out = tmp_path / "pairs"
    assert main(["train", "synth-pairs", str(src), "-o", str(out), "--variants", "3", "--seed", "1", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert len(list((out / "low").iterdir())) == 3
    assert main(["train", "synth-pairs", str(src), "-o", str(out), "-q"]) != 0  # not empty: refused
    assert main(["train", "synth-pairs", str(tmp_path / "nothing"), "-o", str(tmp_path / "x"), "-q"]) != 0


def test_channel_gains_make_a_colour_cast() -> None:
    x = _flat(0.6)
    cast = degrade(x, DegradeParams(0.05, 0.0, 0.0, 2.2, gains=(1.3, 1.0, 0.75)), np.random.default_rng(0))
    r, g, b = (cast[..., c].mean() for c in range(3))
    assert r > g > b
    neutral = degrade(x, DegradeParams(0.05, 0.0, 0.0, 2.2), np.random.default_rng(0))
    assert neutral[..., 0].mean() == neutral[..., 1].mean() == neutral[..., 2].mean()


def test_blur_softens_and_keeps_the_mean() -> None:
    x = np.random.default_rng(3).random((48, 48, 3))
    sharp = degrade(x, DegradeParams(0.5, 0.0, 0.0, 1.0), np.random.default_rng(0)).astype(float)
    soft = degrade(x, DegradeParams(0.5, 0.0, 0.0, 1.0, blur=1.0), np.random.default_rng(0)).astype(float)
    assert np.abs(np.diff(soft, axis=1)).mean() < 0.5 * np.abs(np.diff(sharp, axis=1)).mean()
    assert abs(soft.mean() - sharp.mean()) < 1.0


def test_contrast_curve_is_monotonic_and_fixes_the_ends() -> None:
    ramp = np.linspace(0, 1, 3 * 256).reshape(16, 16, 3)
    for s in (-0.5, 0.0, 0.4, 0.5):
        y = degrade(ramp, DegradeParams(1.0, 0.0, 0.0, 1.0, contrast=s), np.random.default_rng(0)).reshape(-1)
        assert np.all(np.diff(y.astype(int)) >= 0) and y[0] == 0 and y[-1] == 255
    s_curve = degrade(ramp, DegradeParams(1.0, 0.0, 0.0, 1.0, contrast=0.4), np.random.default_rng(0)).astype(float)
    plain = degrade(ramp, DegradeParams(1.0, 0.0, 0.0, 1.0), np.random.default_rng(0)).astype(float)
    assert s_curve.std() > plain.std()  # an S-curve spreads the tones


def test_camera_spec_draws_every_step_and_classic_draws_none() -> None:
    rng = np.random.default_rng(0)
    ps = [sample_params(rng, DegradeSpec()) for _ in range(300)]
    assert any(p.blur > 0 for p in ps) and any(p.blur == 0 for p in ps)
    assert any(p.jpeg_quality for p in ps) and min(p.contrast for p in ps) < 0 < max(p.contrast for p in ps)
    assert all(p.gains[1] == 1.0 and 0.77 < p.gains[0] < 1.29 and 0.77 < p.gains[2] < 1.29 for p in ps)
    classic = [sample_params(rng, DegradeSpec.classic()) for _ in range(50)]
    assert all(p.gains == (1.0, 1.0, 1.0) and p.contrast == 0 and p.blur == 0 and p.jpeg_quality is None for p in classic)
    with pytest.raises(ValueError):
        DegradeSpec(contrast_range=(0.0, 0.9))
