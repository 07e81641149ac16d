"""LLFlow without the golden fixtures: preprocessing rules, flow math, shapes and batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lle_cli.errors import WeightsError
from lle_cli.models import FAMILIES, build_model, detect_family, load_state_strict
from lle_cli.models.llflow import LLFlow, LLFlowConfig, auto_padding, equalize_hist, pad_symmetric
from lle_cli.models.llflow.coupling import CondAffineCoupling, coupling_class, coupling_net, run_concat
from lle_cli.flows.layers import actnorm, affine, invconv1x1, squeeze2d, unsqueeze2d
from lle_cli.models.llflow.model import UNUSED_CHECKPOINT_PREFIXES, negative_log_likelihood
from lle_cli.models.llflow.preprocess import network_input

TINY = LLFlowConfig(nf=8, nb=2, gc=8, K=2, hidden_channels=8, stack_blocks=(1,))


def perturbed(cfg: LLFlowConfig = TINY, sigma: float = 0.02, seed: int = 0) -> LLFlow:
    """A model whose every parameter is non-zero (fresh couplings start as exact identities)."""
    model = LLFlow(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(sigma * torch.randn(p.shape, generator=g))
    return model.eval()


# -- preprocessing --------------------------------------------------------------------------


def _equalize_reference(plane: np.ndarray) -> np.ndarray:
    """OpenCV's equalizeHist written out step by step (shared/golden/NOTES.md section 5)."""
    hist = np.bincount(plane.ravel(), minlength=256)
    i0 = int(np.flatnonzero(hist)[0])
    if hist[i0] == plane.size:
        return np.full_like(plane, i0)
    scale = np.float32(255) / np.float32(plane.size - hist[i0])
    lut = np.zeros(256, dtype=np.uint8)
    total = 0
    for j in range(i0 + 1, 256):
        total += int(hist[j])
        lut[j] = np.uint8(np.rint(np.float32(total) * scale))
    return lut[plane]


@pytest.mark.parametrize(
    "make",
    [
        lambda r: r.integers(0, 256, (37, 41)),  # full range
        lambda r: r.integers(10, 60, (16, 16)),  # narrow range, i0 > 0
        lambda r: np.full((5, 7), 77),  # constant: stays constant
        lambda r: np.where(r.random((9, 9)) > 0.5, 3, 200),  # two values
        lambda r: (r.random((64, 48)) ** 4 * 255).round(),  # dark, like a low-light photo
        lambda r: np.arange(255 * 3).reshape(15, 51) % 256,  # ties at exact .5 before rounding
    ],
)
def test_equalize_hist_is_opencvs_algorithm(make, rng) -> None:
    plane = make(rng).astype(np.uint8)
    got = equalize_hist(torch.from_numpy(plane)).numpy()
    np.testing.assert_array_equal(got, _equalize_reference(plane))


def test_equalize_hist_works_per_plane_and_rejects_floats(rng) -> None:
    planes = rng.integers(0, 256, (2, 3, 10, 12)).astype(np.uint8)
    got = equalize_hist(torch.from_numpy(planes)).numpy()
    for i in range(2):
        for c in range(3):
            np.testing.assert_array_equal(got[i, c], _equalize_reference(planes[i, c]))
    with pytest.raises(TypeError):
        equalize_hist(torch.rand(4, 4))


@pytest.mark.parametrize(("size", "expected"), [(96, (8, 8)), (90, (3, 3)), (131, (6, 7)), (16, (8, 8)), (1, (7, 8)), (17, (7, 8))])
def test_auto_padding_always_pads(size: int, expected: tuple[int, int]) -> None:
    pad = auto_padding(size, size)
    assert (pad.top, pad.bottom) == (pad.left, pad.right) == expected
    assert (size + sum(expected)) % 16 == 0


@pytest.mark.parametrize("hw", [(6, 9), (2, 3), (1, 1), (20, 5)])
def test_symmetric_padding_matches_numpy(hw, rng) -> None:
    x = rng.random((1, 3, *hw)).astype(np.float32)
    pad = auto_padding(*hw)
    got = pad_symmetric(torch.from_numpy(x), pad).numpy()
    want = np.pad(x, ((0, 0), (0, 0), (pad.top, pad.bottom), (pad.left, pad.right)), mode="symmetric")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(pad.crop(torch.from_numpy(got)).numpy(), x)


def test_network_input_equalizes_the_padded_8bit_image(rng) -> None:
    u8 = rng.integers(0, 90, (1, 3, 21, 30)).astype(np.uint8)
    x = torch.from_numpy(u8.astype(np.float32) / np.float32(255))
    lq, pad = network_input(x)
    assert lq.shape == (1, 6, 32, 32)
    padded = np.pad(u8, ((0, 0), (0, 0), (pad.top, pad.bottom), (pad.left, pad.right)), mode="symmetric")
    want_his = np.stack([_equalize_reference(padded[0, c]) for c in range(3)])[None].astype(np.float32) / 255
    np.testing.assert_array_equal(lq[:, 3:].numpy(), want_his)
    np.testing.assert_allclose(lq[:, :3].numpy(), np.log(np.maximum(padded / np.float32(255) + 1e-3, 1e-3)), rtol=1e-6)


# -- flow math ------------------------------------------------------------------------------


def test_squeeze_layout_and_inverse() -> None:
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    s = squeeze2d(x, 2)
    assert s.shape == (2, 12, 2, 3)
    # output channel c*4 + dy*2 + dx holds input pixel (2i + dy, 2j + dx) of channel c
    assert s[1, 2 * 4 + 1 * 2 + 0, 1, 2] == x[1, 2, 3, 4]
    torch.testing.assert_close(unsqueeze2d(s, 2), x)
    torch.testing.assert_close(unsqueeze2d(squeeze2d(x[:, :, :, :4], 4), 4), x[:, :, :, :4])
    with pytest.raises(ValueError):
        squeeze2d(torch.zeros(1, 1, 3, 4))


def _logdet_autograd(fn, x: torch.Tensor) -> float:
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.view_as(x)).reshape(-1), x.reshape(-1).double())
    return float(torch.linalg.slogdet(jac)[1])


def test_elementary_layers_invert_and_their_logdets_match_autograd() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 2, 3, generator=g, dtype=torch.float64)
    bias, logs = torch.randn(1, 4, 1, 1, generator=g, dtype=torch.float64), torch.randn(1, 4, 1, 1, generator=g, dtype=torch.float64) * 0.3
    w = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0] + 0.1 * torch.randn(4, 4, generator=g, dtype=torch.float64)
    shift = torch.randn(1, 4, 2, 3, generator=g, dtype=torch.float64)
    scale = torch.rand(1, 4, 2, 3, generator=g, dtype=torch.float64) + 0.1
    for fn in (
        lambda v, inverse=False: actnorm(v, bias, logs, inverse=inverse),
        lambda v, inverse=False: invconv1x1(v, w, inverse=inverse),
        lambda v, inverse=False: affine(v, shift, scale, inverse=inverse),
    ):
        y, ld = fn(x)
        back, ld_inv = fn(y, inverse=True)
        torch.testing.assert_close(back, x)
        assert float(ld.sum() + ld_inv.sum()) == pytest.approx(0.0, abs=1e-9)
        assert float(ld.sum()) == pytest.approx(_logdet_autograd(lambda v: fn(v)[0], x), rel=1e-6, abs=1e-9)


def test_coupling_inverts_and_its_logdet_matches_autograd() -> None:
    torch.manual_seed(3)
    layer = CondAffineCoupling(in_channels=5, cond_channels=3, hidden_channels=6).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z = torch.randn(1, 5, 3, 2, dtype=torch.float64)
    ft = torch.randn(1, 3, 3, 2, dtype=torch.float64)
    with torch.no_grad():
        y, ld = layer(z, ft)
        back, ld_inv = layer(y, ft, inverse=True)
    torch.testing.assert_close(back, z)
    assert float(ld + ld_inv) == pytest.approx(0.0, abs=1e-9)
    assert float(ld) == pytest.approx(_logdet_autograd(lambda v: layer(v, ft)[0], z), rel=1e-6)


def test_coupling_broadcasts_batch1_features_over_a_batch_of_latents() -> None:
    torch.manual_seed(4)
    layer = CondAffineCoupling(in_channels=6, cond_channels=4, hidden_channels=8)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = torch.randn(3, 6, 5, 4)
    ft = torch.randn(1, 4, 5, 4)
    for inverse in (False, True):
        with torch.no_grad():
            batched, ld = layer(z, ft, inverse=inverse)  # the feature part runs once for all three
            for i in range(3):
                one, ld1 = layer(z[i : i + 1], ft, inverse=inverse)
                torch.testing.assert_close(batched[i : i + 1], one, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(ld[i : i + 1], ld1, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("grad", [False, True])
def test_split_first_convolution_equals_the_concatenation(grad: bool) -> None:
    torch.manual_seed(5)
    net = coupling_net(3 + 7, 8, 16)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))  # non-trivial ActNorms and output scale
    a, b = torch.randn(2, 3, 6, 5), torch.randn(1, 7, 6, 5)
    with torch.set_grad_enabled(grad):  # inference folds the ActNorms into the convolutions
        split = run_concat(net, [a, b])
        want = net(torch.cat([a, b.expand(2, -1, -1, -1)], dim=1))
    torch.testing.assert_close(split, want, rtol=1e-5, atol=1e-6)


def test_whole_flow_round_trip_and_logdets_cancel() -> None:
    model = perturbed()
    x = torch.rand(2, 3, 20, 27)
    with torch.no_grad():
        lq, pad = model.prepare(x)
        feats = model.condition(lq)
        mean = model.latent_mean(feats)
        assert mean.shape == (2, 192, lq.shape[2] // 8, lq.shape[3] // 8)
        z = mean + 0.7 * torch.randn_like(mean)
        img, ld_dec = model.decode(feats, z)
        z_back, ld_enc = model.encode(img, feats)
    torch.testing.assert_close(z_back, z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ld_enc, -ld_dec, rtol=1e-4, atol=1e-2)


def test_chunked_decode_shares_conditioning_and_matches_one_pass() -> None:
    model = perturbed()
    x = torch.rand(1, 3, 24, 20)
    calls = []
    with torch.no_grad():
        feats = model.condition(model.prepare(x)[0])
        mean = model.latent_mean(feats)
        z = mean + 0.5 * torch.randn(5, *mean.shape[1:])
        whole, ld = model.decode(feats, z)
        hooks = [layer.affine.fFeatures.register_forward_hook(lambda *a: calls.append(1))
                 for layer in model.flowUpsamplerNet.layers if getattr(layer, "conditional", False)]
        steps = []
        chunked, ld_c = model.decode(feats, z, chunk=2, progress=lambda d, t: steps.append((d, t)))
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld_c, ld, rtol=1e-5, atol=1e-3)
    assert len(calls) == len(hooks)  # the feature injector ran once per coupling, not once per chunk
    n_layers = len(model.flowUpsamplerNet.layers)
    assert steps[-1] == (n_layers, n_layers) and len(steps) == n_layers


def test_nll_is_bits_per_pixel_of_a_gaussian() -> None:
    z = torch.zeros(1, 192, 2, 2)
    nll = negative_log_likelihood(z, torch.zeros_like(z), torch.zeros(1), pixels=16 * 16)
    assert float(nll) == pytest.approx(0.5 * np.log(2 * np.pi) * z.numel() / (np.log(2) * 256))


# -- the model as a family ------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(1, 1), (17, 23), (32, 48), (5, 70)])
def test_enhance_any_size_gives_the_input_size(hw) -> None:
    model = perturbed()
    with torch.no_grad():
        y = model(torch.rand(1, 3, *hw))
    assert y.shape == (1, 3, *hw) and torch.isfinite(y).all()


def test_tau0_forward_is_decode_of_the_mean_cropped() -> None:
    model = perturbed()
    x = torch.rand(1, 3, 19, 33)
    with torch.no_grad():
        lq, pad = model.prepare(x)
        feats = model.condition(lq)
        full, _ = model.decode(feats, model.latent_mean(feats))
        torch.testing.assert_close(model(x), pad.crop(full))


def test_published_configs_build_with_upstream_parameter_counts() -> None:
    # upstream counts minus the never-called heads (shared/golden/MANIFEST.json: n_parameters_used)
    small = LLFlow(LLFlowConfig(nf=32, nb=4, K=4, stack_blocks=(1,)))
    assert sum(p.numel() for p in small.parameters()) == 5_429_849 - 462_214
    mid = LLFlow(LLFlowConfig(nb=8, K=2))
    assert sum(p.numel() for p in mid.parameters()) == 10_534_777 - 1_182_086
    assert small.config.cond_channels == 64 and mid.config.cond_channels == 320
    keys = small.state_dict().keys()
    assert "flowUpsamplerNet.layers.3.affine.fAffine.0.actnorm.logs" in keys  # layer 0 is the squeeze
    assert "flowUpsamplerNet.layers.1.invconv.weight" in keys and "flowUpsamplerNet.layers.1.affine.fAffine.0.weight" not in keys


def test_unused_upstream_keys_are_dropped_and_others_still_checked() -> None:
    model = LLFlow(TINY)
    state = dict(model.state_dict())
    state["flowUpsamplerNet.f.0.weight"] = torch.zeros(3)
    state["RRDB.HRconv.bias"] = torch.zeros(3)
    assert all(k.startswith(UNUSED_CHECKPOINT_PREFIXES) for k in ("flowUpsamplerNet.f.0.weight", "RRDB.HRconv.bias"))
    load_state_strict(LLFlow(TINY), state, source="x.pth")
    state["RRDB.extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="unexpected 1 keys"):
        load_state_strict(LLFlow(TINY), state, source="x.pth")


def test_family_registration_and_detection() -> None:
    spec = FAMILIES["llflow"]
    assert spec.multiple_of == 1  # the model pads itself; the runner must not pad again
    model = build_model("llflow", {"nf": 8, "nb": 2, "gc": 8, "K": 1, "hidden_channels": 8, "stack_blocks": [0]})
    assert model.config.stack_blocks == (0,)
    assert detect_family(model.state_dict()) == "llflow"
    with pytest.raises(WeightsError, match="unknown architecture keys"):
        build_model("llflow", {"depth": 3})


def test_config_validation_and_coupling_selection() -> None:
    with pytest.raises(ValueError, match="stack_blocks"):
        LLFlowConfig(nb=2, stack_blocks=(5,))
    with pytest.raises(ValueError, match="unknown coupling"):
        LLFlow(LLFlowConfig(nf=8, nb=2, K=1, stack_blocks=(), coupling="nope"))
    assert coupling_class("affine") is CondAffineCoupling


def test_rqs_coupling_plugs_into_the_same_network() -> None:
    pytest.importorskip("lle_cli.flows.rq_coupling")
    model = perturbed(LLFlowConfig(nf=8, nb=2, gc=8, K=1, hidden_channels=8, stack_blocks=(1,), coupling="rqs"), sigma=0.05)
    assert any(".affine.fRQspline." in k for k in model.state_dict())
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        lq, _ = model.prepare(x)
        feats = model.condition(lq)
        mean = model.latent_mean(feats)
        z = mean + 0.3 * torch.randn(2, *mean.shape[1:])
        img, ld = model.decode(feats, z)
        back, ld2 = model.encode(img, feats)
    torch.testing.assert_close(back, z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ld + ld2, torch.zeros(2), rtol=0, atol=1e-2)


def test_block_features_expose_every_rrdb_output() -> None:
    model = perturbed()
    with torch.no_grad():
        f = model.block_features(torch.rand(1, 3, 30, 30))
    assert f.shape == (1, TINY.nb * TINY.nf, 16, 16)  # 30 + 2 padding = 32, at half resolution


def test_actnorm_data_init_normalises_the_batch() -> None:
    model = LLFlow(TINY)
    x, gt = torch.rand(1, 3, 32, 32) * 0.2, torch.rand(1, 3, 32, 32)
    model.initialize_actnorms(x, gt)
    layers = model.flowUpsamplerNet.layers
    for norm in (layers[1].actnorm, layers[3].actnorm, layers[3].affine.fAffine[0].actnorm, layers[-1].affine.fFeatures[2].actnorm):
        assert float(norm.logs.detach().abs().sum()) > 0 and float(norm.bias.detach().abs().sum()) > 0
    with torch.no_grad():
        y = model(x)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("hw", [(70, 44), (101, 60)])
def test_inference_encoder_equals_the_autograd_path(hw, monkeypatch) -> None:
    # Inference runs the full-resolution head in strips, fills level 1 in place and computes the
    # colour map at half resolution; autograd runs upstream's concatenating path. Same numbers.
    from lle_cli.models.llflow import encoder

    model = perturbed(LLFlowConfig(nf=8, nb=4, gc=8, K=1, hidden_channels=8, stack_blocks=(0, 2)))
    lq = model.prepare(torch.rand(1, 3, *hw))[0]
    with torch.enable_grad():
        ref = model.condition(lq)
    monkeypatch.setattr(encoder, "_HEAD_STRIP_PIXELS", 16 * lq.shape[-1])  # 16-row strips: several
    strips = []
    run_strip = model.RRDB._head_strip
    monkeypatch.setattr(model.RRDB, "_head_strip", lambda part, keep=None: strips.append(keep) or run_strip(part, keep))
    with torch.inference_mode():
        got = model.condition(lq)
        head = model.RRDB._head(lq)
    assert len(strips) == 2 * -(-lq.shape[-2] // 16)
    monkeypatch.setattr(encoder, "_HEAD_STRIP_PIXELS", 1 << 40)
    with torch.inference_mode():
        # the same sums; oneDNN may block a strip differently from the whole image (float rounding)
        torch.testing.assert_close(head, model.RRDB._head(lq), rtol=1e-6, atol=1e-6)
    for a, b in zip(got.levels, ref.levels, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.color_map, ref.color_map.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hw", [(8, 12), (9, 7), (2, 2)])
def test_fast_max_pool_equals_max_pool2d(hw) -> None:
    from lle_cli.models.llflow.encoder import _max_pool2

    x = torch.randn(2, 3, *hw)
    x[0, 1, 0, 1] = float("nan")  # a NaN in a window poisons that window's maximum, as in max_pool2d
    want = torch.nn.functional.max_pool2d(x, 2)
    got = _max_pool2(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert got[0, 1, 0, 0].isnan()
