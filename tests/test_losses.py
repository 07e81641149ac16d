from __future__ import annotations

import torch

from lle_cli.losses import color_constancy, exposure_control, illumination_smoothness, spatial_consistency, zero_reference_loss


def test_losses_vanish_where_they_should() -> None:
    x = torch.rand(2, 3, 32, 32)
    assert spatial_consistency(x, x) == 0
    assert exposure_control(torch.full((1, 3, 32, 32), 0.6)) < 1e-12
    assert color_constancy(torch.rand(1, 1, 16, 16).expand(1, 3, 16, 16)) == 0
    assert illumination_smoothness(torch.full((1, 24, 8, 8), 0.3)) == 0


def test_losses_by_hand() -> None:
    img = torch.zeros(1, 3, 16, 16)
    img[:, 0] = 0.9  # mean rgb (0.9, 0, 0): d_rg = d_rb = 0.81, d_gb = 0
    assert torch.isclose(color_constancy(img), torch.tensor((0.81**2 * 2) ** 0.5))
    assert torch.isclose(exposure_control(torch.zeros(1, 3, 16, 16)), torch.tensor(0.36))
    a = torch.zeros(1, 1, 2, 2)
    a[0, 0, 1, :] = 1.0  # vertical steps: tv_h = 2 / (1*2), tv_w = 0
    assert torch.isclose(illumination_smoothness(a), torch.tensor(2.0))
    # one 4x4 region brighter by 1 in the enhanced image: its 4 neighbour differences change by 1 each,
    # the 4 neighbours each see one difference change: 8 unit terms over 4x4 regions
    o = torch.zeros(1, 3, 16, 16)
    e = o.clone()
    e[..., 4:8, 4:8] = 1.0
    assert torch.isclose(spatial_consistency(o, e), torch.tensor(8.0 / 16))


def test_total_is_weighted_sum_and_differentiable() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    curves = torch.rand(2, 24, 32, 32, generator=gen).requires_grad_(True)
    enhanced = x + curves[:, :3] * (x * x - x)
    total, parts = zero_reference_loss(x, enhanced, curves)
    expected = parts["spatial"] + 10 * parts["exposure"] + 5 * parts["color"] + 200 * parts["smoothness"]
    # the total is ~3e3 in float32, so compare relatively (float32 keeps ~7 digits)
    assert abs(total.item() - expected) <= 1e-6 * abs(expected)
    total.backward()
    assert torch.isfinite(curves.grad).all()
