"""Tiled inference: the plan, the blending weights, tiled == untiled per family, the automatic policy,
``--tile``, and bounded memory for a large image (measured in a subprocess)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from lle_cli import _cpu
from lle_cli.cli.main import main
from lle_cli.errors import UsageError
from lle_cli.models import FAMILIES, build_model
from lle_cli.models.llflow.preprocess import (
    auto_padding,
    equalize_hist,
    pad_symmetric,
    quantize_u8,
)
from lle_cli.registry import get_registry
from lle_cli.models.llflow.tiles import equalize_lut, padded_histogram
from lle_cli.runner import PROCESS_MEMORY_MB, TILE_MEMORY_ENV, LoadedModel, tile_memory_budget
from lle_cli.tiling import plan_axis, plan_tiles, plan_within_area, run_tiled, tile_overlap
from lle_cli.weights import load_upstream_checkpoint

from .conftest import UPSTREAM_FILES, shared_path


def loaded(name: str, module: torch.nn.Module | None = None, tile: int | None = None) -> LoadedModel:
    entry = get_registry().resolve(name)
    module = module if module is not None else build_model(entry.family, entry.architecture)
    return LoadedModel(entry, module.eval(), torch.device("cpu"), torch.float32, "test", tile=tile)


def dim_photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth under-exposed scene with noise and an edge: not flat, so tile seams would show."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.04 + 0.2 * (y / h) * (x / w) + 0.1 * (x > w * 0.6)
    rgb = base[:, :, None] * np.array([1.0, 0.8, 0.6], np.float32) + rng.random((h, w, 3), dtype=np.float32) * 0.05
    return np.clip(rgb, 0, 1).astype(np.float32)


# -- plan and weights ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "tile", "margin", "multiple"),
    [(100, 40, 7, 1), (1000, 300, 17, 1), (37, 30, 2, 1), (961, 256, 17, 1), (960, 320, 64, 16), (2048, 832, 64, 16)],
)
def test_axis_plan_covers_every_pixel_and_weights_sum_to_one(n, tile, margin, multiple) -> None:
    overlap = tile_overlap(margin, multiple)
    tiles = plan_axis(n, tile, overlap, margin, multiple)
    assert tiles[0].start == 0 and tiles[-1].stop == n
    total = np.zeros(n)
    covered = np.zeros(n, dtype=bool)
    size = tiles[0].size
    assert size <= tile and size % multiple == 0
    # no larger than the overlaps need: one multiple less and the same number of tiles falls short
    assert (size - multiple) * len(tiles) < n + (len(tiles) - 1) * overlap
    assert len(tiles) == math.ceil((n - overlap) / (tile - overlap))  # and no more tiles than the requested size needs
    for i, t in enumerate(tiles):
        assert t.start % multiple == 0 and t.size == size and t.weights.shape == (size,)
        assert (t.weights >= 0).all()
        # a tile's margin at an edge that faces another tile never contributes
        if i > 0:
            assert (t.weights[:margin] == 0).all()
            assert tiles[i - 1].stop - t.start >= overlap
        if i < len(tiles) - 1:
            assert (t.weights[size - margin :] == 0).all()
        total[t.start : t.stop] += t.weights
        covered[t.start : t.stop] = True
    assert covered.all()
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_2d_weights_sum_to_one_and_identity_tiles_reproduce_the_image(rng) -> None:
    img = rng.random((90, 131, 3), dtype=np.float32)
    plan = plan_tiles(90, 131, 48, tile_overlap(5), 5)
    assert len(plan) == len(plan.rows) * len(plan.cols) > 4
    wsum = run_tiled(plan, lambda r, c: np.ones((r.size, c.size, 1), np.float32), np.zeros((90, 131, 1), np.float32))
    np.testing.assert_allclose(wsum, 1.0, atol=1e-6)
    out = run_tiled(plan, lambda r, c: img[r.start : r.stop, c.start : c.stop], np.zeros_like(img))
    np.testing.assert_allclose(out, img, atol=1e-6)


def test_run_tiled_offset_writes_only_the_inner_part(rng) -> None:
    img = rng.random((40, 50, 2), dtype=np.float32)
    padded = np.pad(img, ((3, 5), (4, 6), (0, 0)), mode="symmetric")
    plan = plan_tiles(48, 60, 32, 16, 4)
    out = run_tiled(plan, lambda r, c: padded[r.start : r.stop, c.start : c.stop], np.zeros_like(img), offset=(3, 4))
    np.testing.assert_allclose(out, img, atol=1e-6)


def test_plan_rejects_what_cannot_hide_the_margins() -> None:
    with pytest.raises(ValueError):
        plan_axis(100, 30, 10, 7)  # overlap < 2 * margin
    with pytest.raises(ValueError):
        plan_axis(100, 20, 20, 7)  # no stride
    with pytest.raises(ValueError):
        plan_axis(100, 32, 16, 4, 16)  # 100 is not a multiple of 16
    assert len(plan_axis(50, 64, 20, 7)) == 1  # a tile larger than the image: the image itself


def _work(plan) -> int:
    return len(plan) * plan.rows[0].size * plan.cols[0].size


@pytest.mark.parametrize(
    ("h", "w", "area", "margin", "multiple"),
    [(1552, 2064, 1_400_000, 64, 16), (1552, 2064, 790_000, 64, 16), (4000, 6000, 640_000, 17, 1), (300, 200, 9_000, 7, 1)],
)
def test_area_plan_fits_and_does_the_least_work_of_any_grid(h, w, area, margin, multiple) -> None:
    overlap = tile_overlap(margin, multiple)
    min_side = 2 * overlap
    plan = plan_within_area(h, w, area, overlap, margin, multiple, min_side)
    th, tw = plan.rows[0].size, plan.cols[0].size
    assert th * tw <= area and min(th, h) >= min(min_side, h) and min(tw, w) >= min(min_side, w)
    wsum = run_tiled(plan, lambda r, c: np.ones((r.size, c.size, 1), np.float32), np.zeros((h, w, 1), np.float32))
    np.testing.assert_allclose(wsum, 1.0, atol=1e-6)
    # brute force: every tile height, each with the widest tiles that still fit
    for side in range(min_side, h + multiple, multiple):
        rows = plan_axis(h, min(side, h), overlap, margin, multiple)
        width_fit = area // rows[0].size // multiple * multiple
        if width_fit < min(min_side, w):
            continue
        cols = plan_axis(w, max(width_fit, min(min_side, w)), overlap, margin, multiple)
        assert _work(plan) <= len(rows) * rows[0].size * len(cols) * cols[0].size


def test_area_plan_prefers_full_height_strips_when_they_are_cheaper() -> None:
    overlap = tile_overlap(64, 16)
    plan = plan_within_area(1552, 2064, 1_400_000, overlap, 64, 16, 2 * overlap)
    assert (len(plan.rows), len(plan.cols)) == (1, 3) and plan.work < 1.25
    square = plan_tiles(1552, 2064, 1168, overlap, 64, 16)  # the largest square tiles of that area
    assert plan.work < square.work
    assert plan.describe() == "3 tiles (1x3) of 816x1552 px"


def test_area_plan_uses_the_smallest_tiles_when_nothing_fits() -> None:
    plan = plan_within_area(500, 700, 100, tile_overlap(7), 7, 1, 2 * tile_overlap(7))
    assert plan.rows[0].size == plan.cols[0].size == 2 * tile_overlap(7)


# -- tiled == untiled ------------------------------------------------------------------------


def test_zero_dce_tiled_equals_untiled(rng) -> None:
    model = loaded("scl-lle")
    img = dim_photo(rng, 150, 211)
    model.tile = 0
    whole = model.enhance(img)
    model.tile = 64
    plan = model.tile_plan(150, 211)
    assert plan is not None and plan.rows[0].size <= 64 and plan.cols[0].size <= 64
    tiled = model.enhance(img)
    assert tiled.shape == whole.shape and tiled.flags.c_contiguous
    np.testing.assert_allclose(tiled, whole, atol=2e-6)


@pytest.mark.slow
def test_unet_tiled_equals_untiled_with_the_global_pooled_context(rng) -> None:
    torch.manual_seed(1)
    model = loaded("rave.unpaired")
    img = dim_photo(rng, 120, 170)
    model.tile = 0
    whole = model.enhance(img)
    # pyramid pooling sees the whole image: tiles that pooled locally would be off by many levels
    model.tile = 104
    plan = model.tile_plan(120, 170)
    assert plan is not None and len(plan) > 1
    tiled = model.enhance(img)
    assert np.abs(tiled - whole).max() < 1e-4  # far inside the 1/255 the issue asks for


@pytest.mark.parametrize("keep", ["all", "none"])
def test_unet_tiles_reuse_the_trunk_they_kept(rng, keep) -> None:
    """Pass 2 reuses pass 1's trunk features where the budget lets it keep them (one trunk run per
    tile), else for the last tile only; the output is the untiled one either way."""
    from lle_cli.models.illumination_unet import pooled_context_pass

    torch.manual_seed(2)
    model = loaded("clip-lit.official")
    img = dim_photo(rng, 200, 230)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
    plan = model.explicit_plan(200, 230, 110)
    assert plan is not None and len(plan) >= 4
    with torch.inference_mode():
        ref = model.module(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    calls = []
    model.module.ResidualBlock2.register_forward_hook(lambda *a: calls.append(1))  # the trunk's last layer
    with torch.inference_mode():
        forward = pooled_context_pass(model.module, x, plan, model._to_device, 1 << 30 if keep == "all" else 0)
        out = np.zeros((200, 230, 3), np.float32)
        run_tiled(plan, lambda r, c: forward(r, c).clamp(0, 1)[0].permute(1, 2, 0).numpy(), out)
    assert len(calls) == (len(plan) if keep == "all" else 2 * len(plan) - 1)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_unet_plan_sets_the_trunk_aside_within_the_budget(monkeypatch) -> None:
    """The automatic plan prices the kept trunk features: tile + kept features stay inside the budget."""
    monkeypatch.delenv(TILE_MEMORY_ENV, raising=False)
    model = loaded("rave.unpaired")
    h, w = 1536, 2048
    plan = model.tile_plan(h, w)
    assert plan is not None and plan.tiled
    spec, cfg = model.spec, model.module.config
    kept = spec.context_bytes(cfg) * len(plan) * plan.rows[0].size * plan.cols[0].size
    assert model._spare_bytes(h, w, plan) >= kept  # every tile's trunk fits beside one tile's pass
    assert spec.activation_bytes(cfg) * plan.rows[0].size * plan.cols[0].size + kept <= model.activation_budget(h, w)


def test_unet_single_tile_path_matches_the_module(rng) -> None:
    # the tiled runner re-composes the UNet's layers; one tile covering the image must equal forward
    model = loaded("clip-lit.official")
    img = dim_photo(rng, 40, 56)
    out = model.enhance_tiled(img, 64)
    with torch.inference_mode():
        ref = model.module(torch.from_numpy(img).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_unet_real_photo_with_upstream_weights_within_one_level() -> None:
    weights = shared_path("upstream", "weights", UPSTREAM_FILES["rave.unpaired"])
    photo = shared_path("data", "backlit", "110_51093502029_o.jpg")
    module = build_model("illumination_unet", get_registry().resolve("rave.unpaired").architecture)
    module.load_state_dict(load_upstream_checkpoint(weights))
    model = loaded("rave.unpaired", module)
    with Image.open(photo) as im:
        img = np.asarray(im.convert("RGB").resize((256, 192), Image.LANCZOS), dtype=np.float32) / 255
    model.tile = 0
    whole = np.rint(model.enhance(img) * 255)
    model.tile = 128
    tiled = np.rint(model.enhance(img) * 255)
    assert np.abs(tiled - whole).max() <= 1


def test_llflow_histogram_of_the_padded_image_without_building_it(rng) -> None:
    x = torch.from_numpy(dim_photo(rng, 37, 53)).permute(2, 0, 1)[None]
    pad = auto_padding(37, 53, 16)
    padded_q = quantize_u8(pad_symmetric(x, pad))
    lut = equalize_lut(padded_histogram(x, pad, rows_per_chunk=8))
    expected = equalize_hist(padded_q)
    got = torch.stack([lut[c][padded_q[0, c].long()] for c in range(3)])[None]
    assert torch.equal(got, expected)
    # a one-valued plane stays that value, as OpenCV's
    flat = torch.zeros(1, 256, dtype=torch.long)
    flat[0, 40] = 100
    assert (equalize_lut(flat) == 40).all()


@pytest.mark.slow
def test_llflow_one_tile_matches_untiled(rng) -> None:
    entry = get_registry().resolve("llflow.lol-small")
    module = build_model("llflow", entry.architecture)
    img = dim_photo(rng, 60, 90)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    module.initialize_actnorms(x, (x * 4).clamp(0, 1))
    model = loaded("llflow.lol-small", module.eval())
    model.tile = 0
    whole = model.enhance(img)
    assert 0.05 < whole.mean() < 0.95  # not all clipped: the comparison means something
    one = model.enhance_tiled(img, 112)  # padded to 64x96: one 112 px tile: the same input as untiled
    np.testing.assert_allclose(one, whole, atol=1e-5)


# -- policy and interfaces -------------------------------------------------------------------


def test_auto_policy_tiles_only_what_does_not_fit(monkeypatch) -> None:
    monkeypatch.delenv(TILE_MEMORY_ENV, raising=False)
    model = loaded("scl-lle")
    assert model.tile_plan(400, 600) is None  # small photos and the parity fixtures run whole
    assert model.tile_plan(4000, 6000) is not None
    per_px = FAMILIES["zero_dce"].activation_bytes(model.module.config)
    monkeypatch.setenv(TILE_MEMORY_ENV, "64")
    plan = model.tile_plan(1000, 1000)
    assert plan is not None and plan.rows[0].size * plan.cols[0].size * per_px <= 64 * 2**20
    model.tile = 0
    assert model.tile_plan(4000, 6000) is None
    model.tile = None
    monkeypatch.setenv(TILE_MEMORY_ENV, "lots")
    with pytest.raises(UsageError, match=TILE_MEMORY_ENV):
        model.tile_plan(1000, 1000)


def test_default_budget_leaves_room_for_the_image_itself(monkeypatch) -> None:
    monkeypatch.delenv(TILE_MEMORY_ENV, raising=False)
    small, photo, huge = (tile_memory_budget(px) for px in (0, 24_000_000, 200_000_000))
    assert small > photo > huge == 512 * 2**20  # bigger images keep more of their own copies around
    # a 24 MP photo: runtime + its copies + activations stay inside the process target
    assert 640 * 2**20 + 32 * 24_000_000 + photo <= PROCESS_MEMORY_MB * 2**20 < 3e9
    # a model's fixed working buffers come out of the activations' share
    assert tile_memory_budget(24_000_000, reserved_mb=384) == photo - 384 * 2**20
    monkeypatch.setenv(TILE_MEMORY_ENV, "300")  # sets the activations' budget itself
    assert tile_memory_budget(24_000_000) == tile_memory_budget(0, reserved_mb=384) == 300 * 2**20


@pytest.mark.skipif(not torch.backends.nnpack.is_available(), reason="this torch build has no NNPACK: no Winograd workspace")
def test_llflow_plans_around_its_winograd_workspace(monkeypatch) -> None:
    monkeypatch.delenv(TILE_MEMORY_ENV, raising=False)
    monkeypatch.delenv(_cpu.WINOGRAD_ENV, raising=False)
    monkeypatch.setattr(_cpu, "_winograd", None)
    model = loaded("llflow.lol")  # 64-channel trunk: its wide convolutions go the Winograd way
    spec, config = FAMILIES["llflow"], model.module.config
    assert spec.workspace_mb(config) > 0
    assert spec.workspace_mb(loaded("llflow.lol-small").module.config) > 0  # nf 32: still wide enough
    plan = model.tile_plan(1536, 2048)
    assert plan is not None
    area = max(t.size for t in plan.rows) * max(t.size for t in plan.cols)
    assert area * spec.activation_bytes(config) <= tile_memory_budget(1536 * 2048, spec.workspace_mb(config))
    monkeypatch.setenv(_cpu.WINOGRAD_ENV, "0")
    monkeypatch.setattr(_cpu, "_winograd", None)
    assert spec.workspace_mb(config) == 0.0


@pytest.mark.parametrize("tile", [100, None])
def test_llflow_tiles_keep_the_16_pixel_grid(tile, monkeypatch) -> None:
    monkeypatch.delenv(TILE_MEMORY_ENV, raising=False)
    model = loaded("llflow.lol-small", tile=tile)
    plan = model.tile_plan(3000, 4000)
    assert plan is not None and (plan.height, plan.width) == (3008, 4016)  # the padded image
    for axis in (plan.rows, plan.cols):
        assert axis[0].size % 16 == 0 and axis[0].size >= 2 * tile_overlap(FAMILIES["llflow"].tile_margin, 16)
        assert all(t.start % 16 == 0 for t in axis)


def test_cli_tile_option(tmp_path, rng, capsys) -> None:
    src = tmp_path / "a.png"
    Image.fromarray((dim_photo(rng, 70, 90) * 255).astype(np.uint8)).save(src)
    tiles = ["-m", "zero-dce.lle-sice"]  # a family that tiles (the default, IAT, sees the whole image)
    assert main(["enhance", str(src), "-o", str(tmp_path / "tiled.png"), "--tile", "48", "-q", *tiles]) == 0
    assert main(["enhance", str(src), "-o", str(tmp_path / "whole.png"), "--tile", "0", "-q", *tiles]) == 0
    a = np.asarray(Image.open(tmp_path / "tiled.png"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "whole.png"), dtype=np.int16)
    assert np.abs(a - b).max() <= 1
    capsys.readouterr()
    assert main(["enhance", str(src), "-o", str(tmp_path / "x.png"), "--tile", "big"]) == 2
    assert "--tile" in capsys.readouterr().err


# -- memory ----------------------------------------------------------------------------------

# Runs ``lle enhance`` as the only child of a fresh interpreter, so RUSAGE_CHILDREN is its peak alone.
_MEASURE = textwrap.dedent(
    """
    import resource, subprocess, sys
    rc = subprocess.run([sys.executable, "-m", "lle_cli", *sys.argv[1:]], stdout=subprocess.DEVNULL).returncode
    print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """
)


def peak_rss_mib(*args: str, env: dict[str, str]) -> float:
    out = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, env=env, check=True)
    rc, kib = out.stdout.split()[-2:]
    assert rc == "0", out.stderr
    return int(kib) / 1024


@pytest.mark.slow
def test_large_image_memory_is_bounded(tmp_path, rng, lle_home) -> None:
    h, w = 1000, 1200  # untiled, Zero-DCE's activations alone would take ~1.6 GB
    big = tmp_path / "big.jpg"
    Image.fromarray((dim_photo(rng, h, w) * 255).astype(np.uint8)).save(big, quality=90)
    small = tmp_path / "small.jpg"
    Image.fromarray((dim_photo(rng, 32, 32) * 255).astype(np.uint8)).save(small)
    env = {**os.environ, "LLE_HOME": str(lle_home), TILE_MEMORY_ENV: "128"}
    zero_dce = ("-m", "zero-dce.lle-sice")  # a family that tiles (the default, IAT, runs whole in strips)
    base = peak_rss_mib("enhance", str(small), "-o", str(tmp_path / "s.png"), "-q", *zero_dce, env=env)
    peak = peak_rss_mib("enhance", str(big), "-o", str(tmp_path / "b.png"), "-q", *zero_dce, env=env)
    untiled = FAMILIES["zero_dce"].activation_bytes(build_model("zero_dce").config) * h * w / 2**20
    # budget + the image's own copies (a few 23 MB float arrays and 6 MB byte arrays) + slack
    assert peak - base < 128 + 250, (base, peak)
    assert peak - base < untiled / 4
    with Image.open(tmp_path / "b.png") as out:
        assert out.size == (w, h)


# Peak working memory of one untiled LLFlow pass per pixel, in a fresh interpreter with glibc's
# default (freed blocks go back to the system), so the high-water mark is what the pass keeps alive
# at once. VmHWM, not ru_maxrss: a child inherits its parent's RSS into ru_maxrss at exec, which
# made this read 1,827 B/px inside a full pytest run (the pytest process's own size) and 800 alone.
_LLFLOW_ARCH = {"nb": 4, "K": 1, "stack_blocks": [1, 3]}
_LLFLOW_PEAK = textwrap.dedent(
    """
    import json, sys, torch
    from lle_cli.models import build_model

    def hwm():
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    torch.set_num_threads(1)
    model = build_model("llflow", json.loads(sys.argv[3])).eval()
    h, w = int(sys.argv[1]), int(sys.argv[2])
    x = torch.rand(1, 3, h, w)
    with torch.inference_mode():
        model(torch.rand(1, 3, 32, 32))
        open("/proc/self/clear_refs", "w").write("5")  # the high-water mark restarts from here
        base = hwm()
        model(x)
    print((hwm() - base) / (h * w), model.config.cond_channels)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to read and reset VmHWM")
def test_llflow_pass_stays_inside_the_planners_estimate() -> None:
    # The automatic tiling sizes LLFlow's tiles from activation_bytes per pixel plus the fixed
    # workspace_mb (the Winograd buffers): a pass must not need more.
    env = {**os.environ, "LLE_KEEP_FREED_MEMORY": "0"}
    h, w = 768, 1024
    args = [str(h), str(w), json.dumps(_LLFLOW_ARCH)]
    out = subprocess.run([sys.executable, "-c", _LLFLOW_PEAK, *args], capture_output=True, text=True, env=env, check=True)
    per_pixel, cond = out.stdout.split()
    config = build_model("llflow", _LLFLOW_ARCH).config
    spec = FAMILIES["llflow"]
    estimate = spec.activation_bytes(config) * h * w + spec.workspace_mb(config) * 2**20
    assert int(cond) == 192
    # the full-resolution head alone would take ~800 B/px unstriped; the pass keeps well under
    assert 100 * h * w < float(per_pixel) * h * w < 0.85 * estimate, (per_pixel, estimate / (h * w))


def test_llflow_margin_follows_the_configurations_reach() -> None:
    """The embedded small flows hide 32 px at inner tile edges, the authors' 24-block encoder 64, and
    the family's margin (what ``--tile`` is checked against before loading) bounds both."""
    spec = FAMILIES["llflow"]
    for name, margin in [("llflow.lle-synth-rqs", 32), ("llflow.lle-synth-affine", 32), ("llflow.lol", 64)]:
        entry = get_registry().resolve(name)
        model = LoadedModel(entry, build_model("llflow", entry.architecture).eval(), torch.device("cpu"), torch.float32, "test")
        assert model.tile_margin == margin <= spec.tile_margin
        plan = model.explicit_plan(400, 1200, 700)
        assert plan is not None and plan.cols[0].weights[-margin:].max() == 0  # the hidden border
        assert plan.cols[0].start + plan.cols[0].size - plan.cols[1].start >= 2 * margin + max(margin, 8)
