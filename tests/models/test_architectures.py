"""Random-weight checks of every family: shapes, gradients, the curve and division formulas."""

from __future__ import annotations

import pytest
import torch

from lle_cli.models import FAMILIES, build_model, detect_family, load_state_strict
from lle_cli.models.illumination_unet import divide_by_illumination
from lle_cli.models.zero_dce import apply_curves
from lle_cli.errors import WeightsError


# the standard LLFlow (37.7 M parameters) takes 30-90 s per size forward and backward on 2 cores
_HEAVY = {"llflow"}


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f in _HEAVY else f for f in sorted(FAMILIES)])
@pytest.mark.parametrize("size", [(17, 23), (2, 2), (32, 48)])
def test_forward_backward_shapes(family: str, size: tuple[int, int]) -> None:
    model = build_model(family)
    x = torch.rand(2, 3, *size, requires_grad=True)
    y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert detect_family(model.state_dict()) == family


def test_curve_iteration_formula() -> None:
    x = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    a = torch.full((1, 6, 1, 4), -1.0)  # two iterations of LE(x) = x - (x^2 - x) = 2x - x^2
    once = 2 * x - x**2
    final, mid = apply_curves(x, a, keep_every=1)
    torch.testing.assert_close(mid, once)
    torch.testing.assert_close(final, 2 * once - once**2)


def test_division_never_leaks_non_finite_values() -> None:
    x = torch.tensor([0.0, 0.2, 0.5]).view(1, 3, 1, 1)
    light = torch.zeros(1, 1, 1, 1)
    out = divide_by_illumination(x, light)
    assert torch.isfinite(out).all()
    assert out.flatten().tolist() == [0.0, 1.0, 1.0]


def test_strict_loading_explains_mismatches() -> None:
    model = build_model("zero_dce")
    state = model.state_dict()
    state.pop("e_conv7.bias")
    with pytest.raises(WeightsError, match="missing 1 keys"):
        load_state_strict(build_model("zero_dce"), state, source="x.pth")
    state = build_model("zero_dce", {"iterations": 4}).state_dict()
    with pytest.raises(WeightsError, match="wrong shape"):
        load_state_strict(build_model("zero_dce"), state, source="x.pth")
