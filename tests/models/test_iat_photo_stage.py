"""lle's photo stage of the IAT family (``IATConfig.exposure_transfer``, used by the default
``iat.lle-photo``): the gain map, the highlight shoulder and the blend behave as documented, the
authors' configuration is untouched by it, and the stage exports to ONNX with the network."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lle_cli import api
from lle_cli.models.iat import IAT, IATConfig, box_blur, exposure_gain, highlight_shoulder, luminance, transfer_exposure

from ..conftest import shared_path

SMALL = IATConfig(local_width=8, local_blocks=1, global_width=16, global_heads=2)


def _image(h: int = 40, w: int = 56, seed: int = 0, scale: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, h, w, generator=g) * scale


def test_box_blur_keeps_constants_and_edges() -> None:
    t = torch.full((1, 1, 9, 11), 0.37)
    assert torch.allclose(box_blur(t, 3), t)  # replicated edges: a border's mean is not darkened
    ramp = torch.arange(20.0).view(1, 1, 1, 20).expand(1, 1, 5, 20)
    out = box_blur(ramp, 2)
    assert torch.allclose(out[..., 5:15], ramp[..., 5:15])  # a linear ramp is its own local mean inside


def test_gain_is_the_ratio_of_local_means() -> None:
    x = _image()
    assert torch.allclose(exposure_gain(x, 2.5 * x, 4), torch.full((1, 1, 40, 56), 2.5), atol=1e-5)
    black = torch.zeros(1, 3, 8, 8)
    assert torch.isfinite(exposure_gain(black, black + 0.1, 2)).all()  # the floor keeps black finite
    assert torch.allclose(luminance(torch.ones(1, 3, 2, 2)), torch.ones(1, 1, 2, 2))


def test_shoulder_never_reaches_white_and_keeps_order() -> None:
    m = torch.linspace(0.0, 3.0, 301).view(1, 1, 1, -1).expand(1, 3, 1, -1).contiguous()
    photo_max = torch.full((1, 1, 1, 301), 0.5)
    out = highlight_shoulder(m, photo_max, 0.75, 0.99)[0, 0, 0]
    below = m[0, 0, 0] <= 0.75
    assert torch.equal(out[below], m[0, 0, 0][below])  # untouched below the knee
    assert (out < 0.99).all()  # compressed, never clipped
    assert (out[1:] > out[:-1]).all()  # bright differences survive as smaller ones
    eps = 1e-3  # no kink at the knee: slope 1 on both sides
    near = highlight_shoulder(torch.full((1, 3, 1, 1), 0.75 + eps), torch.full((1, 1, 1, 1), 0.5), 0.75, 0.99)
    assert abs((float(near.amax()) - 0.75) / eps - 1.0) < 0.01


def test_shoulder_keeps_hue_and_never_darkens_the_photo() -> None:
    t = torch.tensor([1.4, 0.7, 0.2]).view(1, 3, 1, 1)
    out = highlight_shoulder(t, torch.tensor(0.6).view(1, 1, 1, 1), 0.75, 0.99)
    assert torch.allclose(out / out.amax(), t / t.amax(), atol=1e-6)  # channels scaled alike
    bright = torch.tensor([0.995, 0.5, 0.1]).view(1, 3, 1, 1)  # a photo pixel already above the ceiling
    out = highlight_shoulder(bright * 1.2, bright.amax(1, keepdim=True), 0.75, 0.99)
    assert float(out.amax()) >= 0.995 - 1e-6


def test_transfer_blends_to_the_network_where_the_gain_is_large() -> None:
    x = _image(scale=0.05)
    net = torch.full_like(x, 0.45)  # gain ~ 18, above the blend's top: all network
    out = transfer_exposure(x, net, 6, (3.0, 8.0), (0.75, 0.99))
    assert torch.allclose(out, net, atol=1e-6)
    mild = (x * 1.5).clamp(0, 1)  # gain 1.5: the photo times the gain, its detail kept
    out = transfer_exposure(x, mild, 6, (3.0, 8.0), (0.75, 0.99))
    assert torch.allclose(out, mild, atol=1e-5)


def test_the_authors_configuration_is_the_network_alone() -> None:
    torch.manual_seed(0)
    net = IAT(SMALL).eval()
    staged = IAT(dataclasses.replace(SMALL, exposure_transfer=True)).eval()
    staged.load_state_dict(net.state_dict())
    x = _image()
    with torch.inference_mode():
        plain, photo = net(x), staged(x)
        expected = transfer_exposure(x, plain.clamp(0, 1), 6, (3.0, 8.0), (0.75, 0.99))
    assert torch.equal(plain, net.forward_all(x).enhanced)
    assert torch.allclose(photo, expected)
    assert not torch.allclose(photo, plain.clamp(0, 1))


def test_the_default_uses_the_stage_and_the_authors_models_do_not() -> None:
    assert api.model_info(None).name == "iat.lle-photo"
    assert api.load_model(None, device="cpu").module.config.exposure_transfer
    from lle_cli.registry import get_registry

    for entry in get_registry().models.values():
        if entry.family == "iat" and entry.name != "iat.lle-photo":
            assert not entry.architecture.get("exposure_transfer"), entry.name


def test_default_on_a_real_dark_photo_clips_nothing_new() -> None:
    """The stage's purpose on a real photo (LIME 9: a lamp whose red channel the network pushed to white)."""
    from lle_cli.imageio import read_image

    rgb = read_image(shared_path("data", "lowlight_real", "LIME", "9.bmp")).rgb.astype(np.float32)
    model = api.load_model(None, device="cpu")
    out = np.round(model.enhance(rgb) * 255)
    newly = (out.max(axis=2) >= 254) & (np.round(rgb * 255).max(axis=2) < 254)
    assert newly.mean() < 1e-4
    assert out.mean() / 255 > rgb.mean() * 1.5  # and it did brighten the photo


@pytest.mark.slow
def test_the_stage_exports_to_onnx(tmp_path) -> None:
    pytest.importorskip("onnxscript", reason="onnxscript (the onnx extra) is not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is not installed")
    from lle_cli.export import TOLERANCE, export_onnx

    result = export_onnx(api.load_model(None, device="cpu", precision="fp32"), tmp_path)
    assert result.max_abs_diff <= TOLERANCE
