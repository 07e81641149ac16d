"""The modified RQ spline (pure functions) and its conditional coupling layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lle_cli.flows.rq_coupling import ActNorm2d, RQSplineCoupling
from lle_cli.flows.rqspline import (
    NUM_PARAMS,
    SplineBounds,
    SplineParams,
    rq_spline,
    spline_knot,
    spline_shift,
    unpack_params,
)

from ..conftest import shared_path

TOL = 1e-5  # the parity bound, relative to max(1, the array's largest magnitude)


def _golden(name: str) -> np.ndarray:
    return np.load(shared_path("golden", "rqspline", f"{name}.npy"))


def _t(name: str) -> torch.Tensor:
    return torch.from_numpy(_golden(name))


def _close(actual: torch.Tensor, name: str) -> None:
    golden = _golden(name)
    assert tuple(actual.shape) == golden.shape, name
    a = actual.detach().numpy()
    assert np.isfinite(a).all(), name
    err = np.abs(a - golden).max()
    assert err <= TOL * max(1.0, float(np.abs(golden).max())), f"{name}: max abs error {err:.2e}"


def _random_params(shape: tuple[int, ...], scale: float = 1.5, dtype: torch.dtype = torch.float64) -> SplineParams:
    g = torch.Generator().manual_seed(1)
    w, h, d, t = (torch.randn(shape, generator=g, dtype=dtype) * scale for _ in range(4))
    return SplineParams(w, h, d, t)


# --- parity with the authors' rational_quadratic_spline (../shared/golden/rqspline) ---------------


def _table(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every array of the element table, computed by our functions at ``dtype``."""
    x, w, h, d, t, u = (_t(n).to(dtype) for n in ("x", "w_raw", "h_raw", "d_raw", "t_raw", "inv_u"))
    params = SplineParams(w, h, d, t)
    out: dict[str, torch.Tensor] = {}
    out["fwd_spline_out"], out["fwd_logabsdet"] = rq_spline(x, w, h, d)
    out["fwd_y"], _ = spline_shift(x, params)
    # the fixture inverts the official float32 forward output; so do we, whatever dtype we run at
    out["inv_x_roundtrip"], out["inv_logabsdet_roundtrip"] = spline_shift(_t("fwd_y").to(dtype), params, inverse=True)
    out["inv_u_out"], out["inv_u_logabsdet"] = rq_spline(u, w, h, d, inverse=True)
    out["norm_x_knot"], out["norm_y_knot"], out["norm_d_knot"] = spline_knot(w, h, d)
    return out


@pytest.mark.parity
def test_element_table_matches_official() -> None:
    assert _t("x").abs().max() >= 1e4  # the table does reach far outside the box
    ours, exact = _table(torch.float32), _table(torch.float64)
    closer_to_exact = {}
    for name, value in ours.items():
        golden, v, e = _golden(name), value.numpy(), exact[name].numpy()
        tol = TOL * max(1.0, float(np.abs(golden).max()))
        assert np.isfinite(v).all(), name
        # Where the authors' float32 result is itself more than `tol` from the float64 value of the
        # same formulas, our more stable inverse root may land on the float64 value instead.
        rescued = (np.abs(v - golden) > tol) & (np.abs(golden - e) > tol) & (np.abs(v - e) <= tol)
        closer_to_exact[name] = int(rescued.sum())
        err = np.where(rescued, 0.0, np.abs(v - golden)).max()
        assert err <= tol, f"{name}: max abs error {err:.2e}"
    # that exception is one element (a steep-knot row of inv_u_logabsdet), and the float64 values
    # we compare it with are the fixture author's float64 re-run (MANIFEST float64_reference_deviation)
    assert sum(closer_to_exact.values()) <= 1, closer_to_exact
    import json

    manifest = json.loads(shared_path("golden", "MANIFEST.json").read_text())
    recorded = manifest["float64_reference_deviation"]["results"]
    for name in ("fwd_spline_out", "fwd_logabsdet", "inv_u_out", "inv_u_logabsdet"):
        dev = np.abs(_golden(name) - exact[name].numpy()).max()
        assert dev == pytest.approx(recorded[f"rqspline/{name}"]["max_abs"], rel=1e-3, abs=1e-9), name


@pytest.mark.parity
def test_parameter_layout_matches_official() -> None:
    p = unpack_params(_t("layout_h"), 12)
    # the authors keep a trailing singleton bin axis on width/height/derivative
    _close(p.width[..., None], "layout_width")
    _close(p.height[..., None], "layout_height")
    _close(p.derivative[..., None], "layout_derivative")
    _close(p.shift, "layout_shift")


def _golden_coupling() -> RQSplineCoupling:
    from safetensors.torch import load_file

    layer = RQSplineCoupling(12, condition_channels=320, hidden_channels=16, std_channels=3)
    state = load_file(shared_path("golden", "rqspline", "coupling_layer_random.safetensors"))
    layer.load_state_dict(state, strict=True)  # the authors' key names load as they are
    return layer.eval()


@pytest.mark.parity
@pytest.mark.parametrize("tag", ["nostd", "std"])
def test_coupling_layer_matches_official(tag: str) -> None:
    layer = _golden_coupling()
    z, ft = _t("coupling_z"), _t("coupling_ft")
    std = _t("coupling_std") if tag == "std" else None
    with torch.no_grad():
        out, logdet = layer(z, ft, logdet=torch.zeros(1), std=std)
        back, logdet_back = layer(_t(f"coupling_{tag}_fwd_out"), ft, inverse=True, logdet=torch.zeros(1), std=std)
    _close(out, f"coupling_{tag}_fwd_out")
    _close(logdet, f"coupling_{tag}_fwd_logdet")
    _close(back, f"coupling_{tag}_rev_out")
    _close(logdet_back, f"coupling_{tag}_rev_logdet")


@pytest.mark.parity
def test_std_branch_changes_the_output() -> None:
    # guards against the std branch silently being skipped (the two fixtures differ)
    layer = _golden_coupling()
    with torch.no_grad():
        a, _ = layer(_t("coupling_z"), ft=_t("coupling_ft"))
        b, _ = layer(_t("coupling_z"), ft=_t("coupling_ft"), std=_t("coupling_std"))
    assert (a - b).abs().max() > 1e-3


# --- properties of the spline ---------------------------------------------------------------------


def _inputs(n: int = 4000, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    inside = torch.rand(n, generator=g, dtype=dtype) - 0.5
    far = torch.randn(n // 4, generator=g, dtype=dtype) * 3
    edges = torch.tensor([-0.5, 0.5, -0.5 + 1e-9, 0.5 - 1e-9, 1e4, -1e4, 0.0], dtype=dtype)
    return torch.cat([inside, far, edges])


@pytest.mark.parametrize("bounds", [SplineBounds(), SplineBounds(-1.0, 2.0)])
def test_round_trip_and_logdets_cancel(bounds: SplineBounds) -> None:
    x = _inputs() * (bounds.high - bounds.low) + (bounds.high + bounds.low) / 2
    p = _random_params(x.shape)
    y, lad = spline_shift(x, p, bounds=bounds)
    x_back, lad_back = spline_shift(y, p, inverse=True, bounds=bounds)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-9)
    torch.testing.assert_close(lad + lad_back, torch.zeros_like(lad), rtol=0, atol=1e-9)
    assert (lad != 0).sum() > len(x) // 2  # most inputs did go through the spline


def test_round_trip_float32() -> None:
    x = _inputs(dtype=torch.float32)
    p = _random_params(x.shape, scale=1.0, dtype=torch.float32)
    y, lad = spline_shift(x, p)
    x_back, lad_back = spline_shift(y, p, inverse=True)
    torch.testing.assert_close(x_back, x, rtol=0, atol=5e-5)
    torch.testing.assert_close(lad + lad_back, torch.zeros_like(lad), rtol=0, atol=1e-4)


def test_steep_knot_inverse_is_stable_in_float32() -> None:
    # slopes of 1e4..1e13 at the knot: the textbook root 2c / (-b - sqrt(.)) cancels to 0/0 there
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2000, generator=g) - 0.5
    w, h = torch.randn(2, 2000, generator=g) * 2
    d = 10 + torch.rand(2000, generator=g) * 20
    y, lad = rq_spline(x, w, h, d)
    x_back, lad_back = rq_spline(y, w, h, d, inverse=True)
    assert torch.isfinite(x_back).all() and torch.isfinite(lad_back).all()
    # x is not recoverable where the map is flat to float32's resolution; compare in y, where it is
    y_again, _ = rq_spline(x_back, w, h, d)
    torch.testing.assert_close(y_again, y, rtol=0, atol=1e-5)


@pytest.mark.parametrize("inverse", [False, True])
def test_logabsdet_matches_autograd(inverse: bool) -> None:
    x = _inputs().requires_grad_(True)
    p = _random_params(x.shape)
    y, lad = rq_spline(x, p.width, p.height, p.derivative, inverse=inverse)
    (grad,) = torch.autograd.grad(y.sum(), x)  # element-wise map: the gradient is the diagonal
    assert (grad > 0).all()  # monotone increasing everywhere, tails included
    torch.testing.assert_close(lad.detach(), grad.log(), rtol=0, atol=1e-8)


def test_identity_tails_and_knot() -> None:
    p = _random_params((64,))
    b = SplineBounds()
    knot = spline_knot(p.width, p.height, p.derivative, b)
    assert ((knot.x > b.low) & (knot.x < b.high) & (knot.y > b.low) & (knot.y < b.high)).all()
    # the interior knot is interpolated with slope d*
    y, lad = rq_spline(knot.x, p.width, p.height, p.derivative)
    torch.testing.assert_close(y, knot.y, rtol=0, atol=1e-12)
    torch.testing.assert_close(lad, knot.d.log(), rtol=0, atol=1e-9)
    # the box corners are fixed points and everything outside passes through unchanged
    for v in (b.low, b.high, b.low - 1.0, b.high + 7.0, -1e4, 1e4):
        x = torch.full((64,), v, dtype=torch.float64)
        y, lad = rq_spline(x, p.width, p.height, p.derivative)
        assert torch.equal(y, x) and torch.equal(lad, torch.zeros_like(lad))
    # continuous at the boundaries, and slope -> 1 there (C^1 with the identity tails)
    eps = 1e-7
    for v in (b.low + eps, b.high - eps):
        x = torch.full((64,), v, dtype=torch.float64)
        y, lad = rq_spline(x, p.width, p.height, p.derivative)
        torch.testing.assert_close(y, x, rtol=0, atol=1e-5)
        assert lad.abs().max() < 1e-2


def test_monotone_and_inside_the_box() -> None:
    x = torch.linspace(-0.6, 0.6, 2001, dtype=torch.float64)[:, None].expand(-1, 50)
    p = _random_params((50,), scale=4.0)
    y, _ = rq_spline(x, p.width, p.height, p.derivative)
    assert (y.diff(dim=0) > 0).all()
    inner = (x > -0.5) & (x < 0.5)
    assert ((y[inner] >= -0.5) & (y[inner] <= 0.5)).all()


def test_no_nan_or_inf_for_far_inputs_and_extreme_params() -> None:
    x = torch.cat([torch.logspace(-6, 4, 200), -torch.logspace(-6, 4, 200), torch.rand(200) - 0.5])
    x = x.float().requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    raw = [(torch.randn(x.shape, generator=g) * 10).requires_grad_(True) for _ in range(3)]
    for inverse in (False, True):
        y, lad = rq_spline(x, *raw, inverse=inverse)
        assert torch.isfinite(y).all() and torch.isfinite(lad).all()
        grads = torch.autograd.grad(y.sum() + lad.sum(), [x, *raw])
        assert all(torch.isfinite(gr).all() for gr in grads)
    far = x.detach().abs() >= 0.5
    y, lad = rq_spline(x.detach(), *(r.detach() for r in raw))
    assert torch.equal(y[far], x.detach()[far]) and (lad[far] == 0).all()


def test_zero_raw_parameters_are_the_identity() -> None:
    # sigmoid(0) = 1/2 puts the knot on the box's diagonal and exp(0) ~ 1 makes its slope ~1
    x = _inputs()
    zeros = torch.zeros_like(x)
    y, lad = rq_spline(x, zeros, zeros, zeros)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
    assert lad.abs().max() < 1e-12


def test_unpack_params_rejects_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        unpack_params(torch.zeros(1, 12, 2, 2), 2)
    with pytest.raises(ValueError, match="low < high"):
        SplineBounds(0.5, -0.5)


# --- the coupling layer -----------------------------------------------------------------------


def _perturbed(layer: torch.nn.Module, scale: float = 0.15) -> torch.nn.Module:
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return layer.eval()


@pytest.mark.parametrize("std_channels", [None, 3, 1])
def test_coupling_round_trip_and_logdet(std_channels: int | None) -> None:
    layer = _perturbed(RQSplineCoupling(6, condition_channels=5, hidden_channels=8, std_channels=std_channels)).double()
    g = torch.Generator().manual_seed(5)
    z = torch.randn(3, 6, 4, 5, generator=g, dtype=torch.float64) * 0.4
    ft = torch.randn(3, 5, 4, 5, generator=g, dtype=torch.float64)
    std = torch.full((3, 1, 1, 1), 0.3, dtype=torch.float64) if std_channels else None
    start = torch.arange(3, dtype=torch.float64)
    with torch.no_grad():
        y, logdet = layer(z, ft, logdet=start, std=std)
        back, logdet_back = layer(y, ft, inverse=True, logdet=logdet, std=std)
    torch.testing.assert_close(back, z, rtol=0, atol=1e-10)
    torch.testing.assert_close(logdet_back, start, rtol=0, atol=1e-10)
    assert (logdet - start).abs().min() > 1e-3  # the perturbed layer is not the identity


def test_coupling_logdet_matches_jacobian() -> None:
    layer = _perturbed(RQSplineCoupling(4, condition_channels=3, hidden_channels=8, std_channels=3)).double()
    g = torch.Generator().manual_seed(6)
    z = torch.randn(1, 4, 3, 3, generator=g, dtype=torch.float64) * 0.3
    ft = torch.randn(1, 3, 3, 3, generator=g, dtype=torch.float64)
    std = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    for reverse in (False, True):
        jac = torch.autograd.functional.jacobian(lambda v: layer(v, ft, inverse=reverse, std=std)[0], z)
        sign, logabs = torch.linalg.slogdet(jac.reshape(z.numel(), z.numel()))
        _, logdet = layer(z, ft, inverse=reverse, std=std)
        assert sign > 0
        torch.testing.assert_close(logdet[0], logabs, rtol=0, atol=1e-8)


def test_fresh_coupling_is_the_identity() -> None:
    # zero-initialised last convolutions give raw parameters 0: spline = identity, shift = 0
    layer = RQSplineCoupling(6, condition_channels=5, hidden_channels=8).eval()
    z, ft = torch.randn(2, 6, 3, 3) * 0.3, torch.randn(2, 5, 3, 3)
    y, logdet = layer(z, ft=ft)
    torch.testing.assert_close(y, z, rtol=0, atol=1e-6)
    assert logdet.abs().max() < 1e-4


def test_coupling_state_dict_keys_follow_the_authors() -> None:
    keys = set(RQSplineCoupling(12, condition_channels=64, hidden_channels=16).state_dict())
    assert {"fRQspline.0.weight", "fRQspline.0.actnorm.logs", "fRQspline.2.actnorm.bias", "fRQspline.4.logs",
            "fFeatures.0.weight", "fFeatures.4.bias"} <= keys
    assert not any(k.startswith("fRQspline_std") for k in keys)  # LLFlow has no std input
    layer = RQSplineCoupling(12, condition_channels=64, hidden_channels=16)
    assert layer.fFeatures[-1].out_channels == 12 * NUM_PARAMS
    assert layer.fRQspline[0].in_channels == 6 + 64 and layer.fRQspline[-1].out_channels == 6 * NUM_PARAMS


def test_coupling_rejects_bad_inputs() -> None:
    layer = RQSplineCoupling(4, condition_channels=3, hidden_channels=8, std_channels=3)
    z, ft = torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="ft"):
        layer(z)
    with pytest.raises(ValueError, match="expected 4 channels"):
        layer(torch.zeros(1, 5, 2, 2), ft=ft)
    with pytest.raises(ValueError, match="std has 2 channels"):
        layer(z, ft=ft, std=torch.zeros(1, 2, 1, 1))
    with pytest.raises(ValueError, match="at least 2 channels"):
        RQSplineCoupling(1)


def test_actnorm_data_dependent_init() -> None:
    x = torch.randn(16, 3, 4, 4) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1) + 3.0
    an = ActNorm2d(3).train()
    y, logdet = an(x, torch.zeros(16))
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-4)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), rtol=0, atol=1e-4)
    torch.testing.assert_close(logdet, torch.full((16,), float(an.logs.detach().sum()) * 16))
    back, logdet_back = an(y, logdet, inverse=True)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logdet_back, torch.zeros(16), rtol=0, atol=1e-4)
    # loaded weights count as initialised: a training-mode pass must not overwrite them
    loaded = ActNorm2d(3)
    loaded.load_state_dict(an.state_dict())
    loaded.train()(x * 10)
    torch.testing.assert_close(loaded.logs, an.logs)
    # in eval mode nothing is initialised from data
    fresh = ActNorm2d(3).eval()
    assert torch.equal(fresh(x)[0], x)


# --- the paper's 2D toy benchmark (bench/robust_toy.py) -------------------------------------------


def _robust_toy():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "robust_toy.py"
    spec = importlib.util.spec_from_file_location("robust_toy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("net", ["authors", "plain"])
@pytest.mark.parametrize("kind", ["affine", "rqs"])
def test_robust_toy_flow_inverts(kind: str, net: str) -> None:
    toy = _robust_toy()
    flow = toy.ConditionalFlow(kind, 3, torch.Generator().manual_seed(0), net)
    x, y = toy.make_data(256, torch.Generator().manual_seed(1))
    flow.train()
    flow.encode(x, y)  # data-dependent ActNorm initialisation
    _perturbed(flow, 0.02).double()  # away from the identity start; float64: the map can be steep
    x, y = x.double(), y.double()
    with torch.no_grad():
        z, logdet = flow.encode(x, y)
        x_back, _ = flow.sample(z, y)
    assert (z[:, 1] - x[:, 1]).abs().max() > 0.1  # not the identity
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-8)
    # log-det of the whole flow against the Jacobian of one sample
    jac = torch.autograd.functional.jacobian(lambda v: flow.encode(v[None], y[:1])[0][0], x[0])
    assert logdet[0].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-8)


@pytest.mark.slow
def test_robust_toy_bench_runs_end_to_end(tmp_path) -> None:
    import json

    toy = _robust_toy()
    out = tmp_path / "robust_toy.json"
    assert toy.main(["--iterations", "20", "--steps", "2", "--n-test", "300", "--jobs", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["ood_shift"] == [0.8, -0.8] and doc["config"]["steps"] == 2
    for kind in ("affine", "rqs"):
        res = doc["results"][kind]
        assert len(res["layers"]) == 1 + 3 * 2 and res["layers"][1] == ("Aff1" if kind == "affine" else "RQs1")
        for cond in ("in", "ood"):
            assert len(res[cond]["variances"]) == len(res["layers"])
            assert 0.0 <= res[cond]["fraction_outside_box"] <= 1.0
        assert res["in"]["variances"][0] == res["ood"]["variances"][0]  # the same latent samples
    assert not list(tmp_path.glob("*.tmp"))
