"""The inference-only code paths (in-place activations, split concatenations, in-place curves,
channels-last weights) compute what the autograd paths compute."""

from __future__ import annotations

import pytest
import torch

from lle_cli._cpu import prepare_for_inference
from lle_cli.models import FAMILIES, build_model


@pytest.mark.parametrize("family", ["zero_dce", "illumination_unet"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_path_equals_autograd_path(family: str, channels_last: bool) -> None:
    model = build_model(family).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the init so every layer matters
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(1, 3, 21, 30) * 0.6 + 0.05
    reference = model(x.clone().requires_grad_(True)).detach()  # grad enabled: the training path
    if channels_last:
        prepare_for_inference(model, FAMILIES[family].channels_last, torch.device("cpu"))
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fast = model(x)
    assert torch.isfinite(reference).all()
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    assert x.min() >= 0.05  # the input itself is never modified in place


def test_zero_dce_curve_maps_match() -> None:
    model = build_model("zero_dce").eval()
    x = torch.rand(1, 3, 17, 19)
    with torch.enable_grad():
        reference = model.curve_parameters(x.requires_grad_(True)).detach()
    with torch.no_grad():
        torch.testing.assert_close(model.curve_parameters(x.detach()), reference, rtol=1e-5, atol=1e-6)
