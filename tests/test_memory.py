"""Bounded memory on big photos: the planner's estimates, OOD features in tiles, heat maps and
validation a band of rows at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lle_cli import ood, sampling
from lle_cli.models import FAMILIES, build_model
from lle_cli.models.llflow import LLFlow, LLFlowConfig
from lle_cli.registry import get_registry
from lle_cli.runner import (
    _IMAGE_BYTES_PER_PIXEL,
    _RUNTIME_MB,
    PROCESS_MEMORY_MB,
    TILE_MEMORY_ENV,
    LoadedModel,
)

TINY = LLFlowConfig(nf=8, nb=2, gc=8, K=2, hidden_channels=8, stack_blocks=(1,))


def _tiny() -> LoadedModel:
    g = torch.Generator().manual_seed(1)
    low = torch.rand(1, 3, 24, 40, generator=g) * 0.25
    module = LLFlow(TINY)
    module.initialize_actnorms(low, (low * 4).clamp(0, 1))
    return LoadedModel(get_registry().resolve("llflow.lol-small"), module.eval(), torch.device("cpu"), torch.float32, "test")


def _dark(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    return np.clip(0.05 + 0.15 * x * y + rng.random((h, w, 3), dtype=np.float32) * 0.05, 0, 1).astype(np.float32)


# -- the planner ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rave.unpaired", "zero-dce.lle-sice", "llflow.lle-synth-rqs"])
@pytest.mark.parametrize("hw", [(2160, 3840), (4000, 6000)])
def test_auto_tiles_keep_the_process_inside_its_target(monkeypatch, name, hw) -> None:
    """Runtime + the image's copies + one tile at the family's measured bytes per pixel stays under
    the 2.5 GiB whole-process target at 8 and 24 MP (bench/tiling.py measures the real peak)."""
    monkeypatch.delenv(TILE_MEMORY_ENV, raising=False)
    entry = get_registry().resolve(name)
    model = LoadedModel(entry, build_model(entry.family, entry.architecture).eval(), torch.device("cpu"), torch.float32, "test")
    spec, cfg = model.spec, model.module.config
    h, w = hw
    plan = model.tile_plan(h, w)
    assert plan is not None and plan.tiled
    tile_area = plan.rows[0].size * plan.cols[0].size
    tile = tile_area * spec.activation_bytes(cfg)
    kept = min(spec.context_bytes(cfg) * len(plan) * tile_area, model._spare_bytes(h, w, plan))  # the UNet's trunk
    total = (_RUNTIME_MB + spec.workspace_mb(cfg)) * 2**20 + _IMAGE_BYTES_PER_PIXEL * h * w + tile + kept
    assert total <= PROCESS_MEMORY_MB * 2**20


def test_unet_estimate_covers_the_measured_worst() -> None:
    """1,280-2,060 B/px were measured at width 32 (a fresh process, glibc keeping freed memory)."""
    spec = FAMILIES["illumination_unet"]
    assert spec.activation_bytes(spec.make_config({})) >= 2060


def test_flow_decode_estimates_follow_the_coupling() -> None:
    spec = FAMILIES["llflow"]
    rqs = spec.make_config({"nf": 32, "nb": 2, "K": 2, "hidden_channels": 32, "stack_blocks": [1], "coupling": "rqs"})
    affine = spec.make_config({"nf": 32, "nb": 2, "K": 2, "hidden_channels": 32, "stack_blocks": [1]})
    assert spec.decode_bytes(rqs) >= 688  # measured per extra latent: 371-688 B/px (0.25-1.9 MP)
    assert 143 <= spec.decode_bytes(affine) < spec.decode_bytes(rqs)  # measured 45-143: conditioning shared


# -- OOD features and heat maps --------------------------------------------------------------


@pytest.mark.slow
def test_tiled_features_equal_untiled_features(monkeypatch, rng) -> None:
    """The tiles' margin covers the needed blocks' whole reach, so tiled patch features are the
    untiled ones up to float rounding (boxes across seams included)."""
    model = _tiny()
    rgb = _dark(rng, 500, 700)  # padded 512x704
    spec = ood.FeatureSpec(blocks=(0, 1), patch_size=50)
    monkeypatch.delenv(TILE_MEMORY_ENV, raising=False)
    assert ood.feature_plan(model, 500, 700, spec) is None
    whole, boxes = ood.patch_features(model, rgb, spec)
    # 70 % of what the whole padded image needs: two or more tiles, whatever the estimate's value
    whole_mb = model.spec.activation_bytes(model.module.config) * 512 * 704 / 2**20
    monkeypatch.setenv(TILE_MEMORY_ENV, str(int(0.7 * whole_mb)))
    plan = ood.feature_plan(model, 500, 700, spec)
    assert plan is not None and len(plan) >= 2
    calls = []
    model.module.RRDB.RRDB_trunk[0].register_forward_hook(lambda *a: calls.append(1))
    tiled, boxes2 = ood.patch_features(model, rgb, spec)
    assert len(calls) == len(plan)
    np.testing.assert_array_equal(boxes, boxes2)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)


def _reference_heatmap(rgb, result, threshold, alpha=0.55):
    """The whole-image computation the banded ``ood.heatmap`` must reproduce."""
    h, w = rgb.shape[:2]
    level = np.zeros((h, w), dtype=np.float64)
    for p in result.patches:
        y0, x0, y1, x1 = p.box
        np.maximum(level[y0:y1, x0:x1], p.score / max(threshold, 1e-12), out=level[y0:y1, x0:x1])
    t = np.clip(level / 2.0, 0.0, 1.0) * (len(ood._RAMP) - 1)
    i = np.minimum(t.astype(np.int64), len(ood._RAMP) - 2)
    f = (t - i)[..., None]
    colour = ood._RAMP[i] * (1 - f) + ood._RAMP[i + 1] * f
    grey = (np.clip(rgb[..., :3], 0, 1) @ np.array([0.299, 0.587, 0.114]))[..., None] * 255.0
    return np.clip(np.rint((1 - alpha) * grey + alpha * colour), 0, 255).astype(np.uint8)


def test_heatmap_in_bands_equals_the_whole_image_computation(rng) -> None:
    rgb = rng.random((300, 2100, 3), dtype=np.float32)  # ~80 rows per band: patches straddle bands
    boxes = ood.patch_boxes(300, 2100, 70)
    res = ood.ImageScore(input="x", patches=[ood.PatchScore(tuple(int(v) for v in b), float(s))
                                             for b, s in zip(boxes, rng.random(len(boxes)) * 3)])
    np.testing.assert_array_equal(ood.heatmap(rgb, res, 1.2), _reference_heatmap(rgb, res, 1.2))


def test_validation_reads_spilled_tiled_samples(monkeypatch, rng) -> None:
    model = _tiny()
    model.tile = 384
    rgb = _dark(rng, 256, 384)
    monkeypatch.setattr(sampling, "_KEEP_SHARE", 0.0)
    spec = ood.FeatureSpec((0, 1), 64)
    stats = ood.fit_stats([ood.patch_features(model, _dark(rng, 256, 384), spec)[0] for _ in range(3)],
                          model={"name": model.name}, spec=spec)
    real, seen = sampling.sample_array, []

    def keep_copies(*args, **kwargs):  # the validation closes its samples; keep what it saw
        drawn = real(*args, **kwargs)
        seen.append((drawn.spilled, drawn.tiles, [(s.image.copy(), s.stats) for s in drawn.samples]))
        return drawn

    monkeypatch.setattr(sampling, "sample_array", keep_copies)
    res = ood.validate_image(model, ood.score_array(model, stats, rgb), rgb, n=2, tau=1.0, seed=3)
    ((spilled, tiles, samples),) = seen
    assert spilled and tiles == 2
    masks = np.mean([ood.error_mask(img).mean(axis=2) for img, _ in samples], axis=0)
    for p in res.patches:
        y0, x0, y1, x1 = p.box
        assert p.error_probability == pytest.approx(masks[y0:y1, x0:x1].mean())
    assert res.error_probability == pytest.approx(np.mean([st.nonfinite_fraction + st.out_of_range_fraction for _, st in samples]))
