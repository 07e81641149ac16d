"""Tiled ``lle sample``: large images are drawn in tiles under enhance's memory budget, with the noise
drawn once per seed for the whole image, so a seed gives the same picture however the image is tiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lle_cli import api, sampling
from lle_cli.cli.main import main
from lle_cli.models.llflow import LLFlow, LLFlowConfig
from lle_cli.registry import get_registry
from lle_cli.runner import TILE_MEMORY_ENV, LoadedModel
from lle_cli.sampling import SampleOptions, run_sample_job, sample_array, sampling_plan

REPO = Path(__file__).resolve().parents[1]
TINY = LLFlowConfig(nf=8, nb=2, gc=8, K=2, hidden_channels=8, stack_blocks=(1,))


def _street(h: int, w: int) -> np.ndarray:
    """A real dark photo (in the repository), cropped."""
    img = np.asarray(Image.open(REPO / "examples" / "dark_street.png").convert("RGB"), dtype=np.float32) / np.float32(255)
    return np.ascontiguousarray(img[:h, :w])


def _levels(img: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(img, 0.0, 1.0) * 255)


def _fresh_tiny() -> LoadedModel:
    """Random weights that behave like a trained flow (data-initialised ActNorms), fast enough for unit tests."""
    g = torch.Generator().manual_seed(1)
    low = torch.rand(1, 3, 24, 40, generator=g) * 0.25
    module = LLFlow(TINY)
    module.initialize_actnorms(low, (low * 4).clamp(0, 1))
    return LoadedModel(get_registry().resolve("llflow.lol-small"), module.eval(), torch.device("cpu"), torch.float32, "test")


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return _fresh_tiny()


def _count_encoder_passes(model: LoadedModel) -> list[int]:
    calls: list[int] = []
    model.module.RRDB.register_forward_hook(lambda *a: calls.append(1))
    return calls


# -- the embedded default model: tiled equals untiled ---------------------------------------


@pytest.mark.slow
def test_tiled_sample_matches_untiled_with_the_same_seed() -> None:
    """256x384 photo (padded 272x400): --tile 384 gives two tiles; every sample is within 2 levels of
    the untiled one on 99.9% of its pixels, with the same statistics up to the seam."""
    model = api.load_model("llflow.lle-synth-rqs", device="cpu")
    rgb = _street(256, 384)
    model.tile = 0
    whole = sample_array(model, rgb, n=2, seed=11)
    model.tile = 384
    calls = _count_encoder_passes(model)
    tiled = sample_array(model, rgb, n=2, seed=11)
    assert whole.tiles == 1 and tiled.tiles == 2
    assert len(calls) == 2 and tiled.encoder_passes == 2  # one encoder pass per tile, for both samples
    assert tiled.decoded == 2 and [s.seed for s in tiled.samples] == [11, 12]
    for a, b in zip(whole.samples, tiled.samples):
        diff = np.abs(_levels(a.image) - _levels(b.image)).max(axis=2)
        assert (diff <= 2).mean() >= 0.999, f"only {(diff <= 2).mean():.4%} of pixels within 2 levels"
        assert b.stats.mean_brightness == pytest.approx(a.stats.mean_brightness, abs=2e-3)
        assert b.status == a.status == "ok"
    # and different seeds still give different pictures when tiled
    assert np.abs(_levels(tiled.samples[0].image) - _levels(tiled.samples[1].image)).mean() > 1.0


@pytest.mark.slow
def test_a_seed_gives_the_same_picture_for_two_tilings() -> None:
    """384x512 (padded 400x528) in 2x2 tiles and in 1x2 tiles: the noise is one field per seed, each
    tile decodes its window of it, so only the blending near the seams can differ."""
    model = api.load_model("llflow.lle-synth-rqs", device="cpu")
    rgb = _street(384, 512)
    out = {}
    for tile in (384, 512):
        model.tile = tile
        drawn = sample_array(model, rgb, n=1, taus=(0.8,), seed=5)
        out[tile] = (drawn.tiles, drawn.samples[0].image)
    assert out[384][0] == 4 and out[512][0] == 2
    diff = np.abs(_levels(out[384][1]) - _levels(out[512][1])).max(axis=2)
    assert (diff <= 2).mean() >= 0.999


# -- structure, noise, storage (a tiny random flow: fast) ----------------------------------


def test_noise_is_one_field_per_seed_sliced_per_tile(tiny, monkeypatch) -> None:
    """Every tile's latent window is cut from ``_eps(seed, whole latent shape)``: the noise a tile sees is
    the untiled noise, whatever the tiling."""
    rgb = _street(200, 600)  # padded 208x608: latent 26x76
    seen: list[tuple[tuple[int, ...], torch.Tensor]] = []
    real = sampling._Noise.window

    def spy(self, seed, index=()):
        out = real(self, seed, index)
        seen.append((self.shape, out.clone(), index))
        return out

    monkeypatch.setattr(sampling._Noise, "window", spy)
    tiny.tile = 320  # three tiles across with the small flow's 96-px overlap
    try:
        drawn = sample_array(tiny, rgb, n=1, seed=9)
    finally:
        tiny.tile = None
    assert drawn.tiles == 3
    full = sampling._eps(9, torch.Size(seen[0][0]))
    assert tuple(full.shape) == (1, 192, 26, 76)
    for _, window, index in seen:
        torch.testing.assert_close(window, full[index], rtol=0, atol=0)
    assert len({idx[3].start for _, _, idx in seen}) == 3  # three different windows


def test_tiled_run_tiles_and_chunks_as_planned(tiny) -> None:
    rgb = _street(256, 384)
    tiny.tile = 384
    calls = _count_encoder_passes(tiny)
    try:
        drawn = sample_array(tiny, rgb, n=5, taus=(0.5, 1.0), seed=0, batch_size=3)
    finally:
        tiny.tile = None
    assert drawn.tiles == 2 and len(calls) == 2  # the encoder once per tile for all ten samples
    assert drawn.batch_size == 3 and drawn.decoded == 10
    assert [s.image.shape for s in drawn.samples] == [(256, 384, 3)] * 10


def test_spilled_samples_equal_samples_kept_in_memory(tiny, monkeypatch) -> None:
    """A large run keeps samples and noise in a temporary file: same pixels, statistics, mean and sheet."""
    rgb = _street(256, 384)
    tiny.tile = 384
    try:
        kept = sample_array(tiny, rgb, n=3, seed=4)
        monkeypatch.setattr(sampling, "_KEEP_SHARE", 0.0)  # anything to keep is "too much"
        spilled = sample_array(tiny, rgb, n=3, seed=4)
    finally:
        tiny.tile = None
    assert spilled.spilled and not kept.spilled
    for a, b in zip(kept.samples, spilled.samples):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.rows(10, 20), b.rows(10, 20))
        assert a.stats == b.stats
    np.testing.assert_array_equal(kept.mean(1.0, 0.0), spilled.mean(1.0, 0.0))
    np.testing.assert_allclose(spilled.mean(1.0, 0.0), np.mean([s.image for s in spilled.samples], axis=0), rtol=1e-6)
    labels = ["a", "b", "c"]
    sheet_a = sampling.contact_sheet([sampling._SampleRows(s) for s in kept.samples], labels, cell=64)
    sheet_b = sampling.contact_sheet([s.image for s in spilled.samples], labels, cell=64)
    np.testing.assert_array_equal(sheet_a, sheet_b)
    spilled.close()
    with pytest.raises(Exception, match="released"):
        _ = spilled.samples[0].image


def test_statistics_are_exact_and_streamed(monkeypatch) -> None:
    """Statistics read a band of rows at a time and still count every value."""
    rng = np.random.default_rng(0)
    img = rng.normal(0.5, 0.6, (50, 40, 3)).astype(np.float32)
    img[3, 5, 1] = np.nan
    img[40, 2] = np.inf
    whole = sampling.sample_stats(img)
    monkeypatch.setattr(sampling, "_CHUNK_BYTES", 40 * 12 * 3)  # 3 rows per band
    banded = sampling.sample_stats(img)
    assert banded.nonfinite_fraction == whole.nonfinite_fraction == 4 / img.size
    finite = img[np.isfinite(img)]
    assert banded.out_of_range_fraction == whole.out_of_range_fraction == np.count_nonzero((finite < -0.5) | (finite > 1.5)) / img.size
    assert (banded.min, banded.max) == (whole.min, whole.max) == (float(finite.min()), float(finite.max()))
    ok = np.isfinite(img).all(axis=2)
    want = float((np.clip(img[ok], 0, 1) @ np.array([0.299, 0.587, 0.114])).mean())
    assert banded.mean_brightness == pytest.approx(want, rel=1e-6) and whole.mean_brightness == pytest.approx(want, rel=1e-6)


class _Poison:
    """Wraps ``decode``: the first latent of the ``tile``-th call gets NaN in columns ``cols`` of its tile."""

    def __init__(self, module: LLFlow, tile: int, cols: slice) -> None:
        self.decode, self.calls, self.tile, self.cols = module.decode, 0, tile, cols
        module.decode = self

    def __call__(self, features, z, **kw):
        out, ld = self.decode(features, z, **kw)
        if self.calls == self.tile:
            out = out.clone()
            out[0, :, :, self.cols] = float("nan")
        self.calls += 1
        return out, ld


@pytest.mark.slow
def test_non_finite_values_are_found_in_tiled_samples_and_margins_do_not_leak(tmp_path) -> None:
    rgb = _street(256, 384)
    model = _fresh_tiny()
    model.tile = 384  # two tiles side by side
    plan = model.explicit_plan(256, 384, 384)
    assert len(plan.cols) == 2
    first = plan.cols[0]
    dead = np.flatnonzero(first.weights == 0)  # its inner margin: no say in the picture
    assert len(dead) >= model.tile_margin == 32  # the small flow's reach (FamilySpec.tile_reach)
    _Poison(model.module, tile=0, cols=slice(int(dead[0]), None))
    drawn = sample_array(model, rgb, n=2, seed=1, max_out_of_range=1.0)
    assert [s.status for s in drawn.samples] == ["ok", "ok"]  # NaN * weight 0 must not become NaN
    _Poison(model.module, tile=1, cols=slice(100, 110))  # inside the second tile's own part: real NaN
    drawn = sample_array(model, rgb, n=2, seed=1, max_out_of_range=1.0)
    bad, good = drawn.samples
    assert bad.status == "non_finite" and good.status == "ok"
    assert bad.stats.nonfinite_fraction == pytest.approx(256 * 10 * 3 / (256 * 384 * 3))  # exactly those columns
    # and the job writes only the finite one
    src = tmp_path / "dark.png"
    Image.fromarray((rgb * 255).astype(np.uint8)).save(src)
    _Poison(model.module, tile=1, cols=slice(100, 110))
    res = run_sample_job(model, str(src), tmp_path / "out", SampleOptions(n=2, seed=1, max_out_of_range=1.0, mean=True))
    assert res.status == "partial" and res.tiles == 2
    assert [s["output"] is None for s in res.samples] == [True, False]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "dark_mean_tau1_off0.png", "dark_sample01_tau1_off0.png", "dark_sheet_tau1_off0.png"]
    sheet = np.asarray(Image.open(tmp_path / "out" / "dark_sheet_tau1_off0.png"))
    assert np.all(sheet == [255, 0, 255], axis=2).sum() > 0  # the NaN columns, magenta on the sheet


@pytest.mark.slow
def test_resample_bad_reruns_the_encoder_tiles(tiny) -> None:
    rgb = _street(256, 384)
    model = _fresh_tiny()
    model.tile = 384
    _Poison(model.module, tile=0, cols=slice(10, 20))
    calls = _count_encoder_passes(model)
    drawn = sample_array(model, rgb, n=2, seed=1, max_out_of_range=1.0, resample_bad=True)
    assert [(s.status, s.seed, s.rejected_seeds) for s in drawn.samples] == [("ok", 3, [1]), ("ok", 2, [])]
    assert drawn.decoded == 3 and len(calls) == drawn.encoder_passes == 4  # two tiles, twice


# -- the plan -------------------------------------------------------------------------------


def test_plan_keeps_a_24mp_sampling_run_inside_the_budget(monkeypatch) -> None:
    monkeypatch.delenv(TILE_MEMORY_ENV, raising=False)
    model = api.load_model("llflow.lle-synth-rqs", device="cpu")
    spec, cfg = model.spec, model.module.config
    budget = model.activation_budget(4000, 6000)
    for n in (1, 4, 10):
        plan = sampling_plan(model, 4000, 6000, n)
        assert plan.tiles is not None and plan.tiles.tiled and 1 <= plan.chunk <= n
        area = plan.tiles.rows[0].size * plan.tiles.cols[0].size
        cost = spec.activation_bytes(cfg) + (plan.chunk - 1) * spec.decode_bytes(cfg)
        assert cost * area <= budget
        assert plan.spill  # 12 bytes per pixel per sample and per seed: a temporary file, not RAM
    small = sampling_plan(model, 400, 600, 10)
    assert small.tiles is None and not small.spill  # small photos run whole, samples in memory
    assert small.chunk == 4  # the spline coupling shares nothing across latents: a few per pass
    model.tile = 0
    assert sampling_plan(model, 4000, 6000, 4).tiles is None  # --tile 0: never


def test_cli_sample_takes_tile(capsys, tmp_path) -> None:
    src = tmp_path / "dark.png"
    Image.fromarray((_street(256, 384) * 255).astype(np.uint8)).save(src)
    assert main(["sample", str(src), "--tile", "lots"]) == 2
    assert "--tile lots" in capsys.readouterr().err
    assert main(["sample", str(src), "--tile", "100"]) == 2
    assert "at least" in capsys.readouterr().err


# -- memory, in a fresh process -------------------------------------------------------------

_CHILD = r"""
import json, sys
import numpy as np, torch
from lle_cli.models.llflow import LLFlow, LLFlowConfig
from lle_cli.registry import get_registry
from lle_cli.runner import LoadedModel
from lle_cli.sampling import sample_array
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
torch.manual_seed(0)
module = LLFlow(LLFlowConfig(nf=8, nb=2, gc=8, K=2, hidden_channels=8, stack_blocks=(1,)))
low = torch.rand(1, 3, 24, 40) * 0.25
module.initialize_actnorms(low, (low * 4).clamp(0, 1))
model = LoadedModel(get_registry().resolve("llflow.lol-small"), module.eval(), torch.device("cpu"), torch.float32, "test")
rgb = np.random.default_rng(0).random((640, 640, 3), dtype=np.float32) * 0.3
sample_array(model, rgb[:64, :64], n=1, seed=0)
base = hwm()
drawn = sample_array(model, rgb, n=int(sys.argv[1]), seed=0, batch_size=1)
print(json.dumps({"base": base, "peak": hwm(), "tiles": drawn.tiles, "spilled": drawn.spilled}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_sampling_memory_follows_the_budget_not_n() -> None:
    """A 640x640 photo under a 120 MiB activation budget (a tiny flow, for speed), one latent per pass:
    tiled either way, and 8 samples peak within a few MB of 1 although their float32 pixels and noise
    fields alone take 80 MB: beyond a quarter of the budget they go to a temporary file, not to RAM."""
    env = {**os.environ, TILE_MEMORY_ENV: "120", "PYTHONPATH": str(REPO)}
    runs = {}
    for n in (1, 8):
        out = subprocess.run([sys.executable, "-c", _CHILD, str(n)], env=env, capture_output=True, text=True, check=True, timeout=900)
        runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs[1]["tiles"] > 1 and runs[8]["tiles"] > 1
    assert not runs[1]["spilled"] and runs[8]["spilled"]
    grown = {n: r["peak"] - r["base"] for n, r in runs.items()}
    assert grown[8] < grown[1] + 24 and grown[8] < 120, grown  # MiB; keeping 8 in RAM would add ~80
