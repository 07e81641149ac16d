"""Zero-DCE++ (Li, Guo, Loy, TPAMI 2021): the fast, light Zero-DCE.

Three changes from Zero-DCE (``zero_dce.py``), all from the authors' ``enhance_net_nopool``
(Zero-DCE++/model.py): every 3x3 convolution is depthwise-separable (``depth_conv`` then a 1x1
``point_conv``); the network predicts one 3-channel curve map that all ``iterations`` share instead
of one per iteration; and it runs on the input downscaled by ``scale_factor``, its curve map then
upscaled to full resolution. The curve is Zero-DCE's ``x <- x + r (x^2 - x)``.

Resampling follows upstream exactly: down with ``F.interpolate(scale_factor=1/s, bilinear,
align_corners=False)`` (for a multiple of 12 the mean of each 12x12 block's central 2x2 pixels), up
with ``nn.UpsamplingBilinear2d``, i.e. **align_corners=True**. The authors' script crops the image to
a multiple of ``scale_factor`` first (top-left kept) and so returns a smaller image; here the image is
instead extended at the bottom and right by edge replication and the result cropped back, so the
output has the input's size. On an input that already is a multiple, this is upstream's computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .family import FamilySpec, register_family

__all__ = ["ZeroDCEPPConfig", "ZeroDCEPP", "apply_shared_curve"]



@dataclass(frozen=True)
class ZeroDCEPPConfig:
    """Architecture; the defaults are the released Zero-DCE++ (10,561 parameters, scale factor 12)."""

    width: int = 32
    iterations: int = 8
    scale_factor: int = 12  # the curve network runs at 1/scale_factor resolution (upstream's test script: 12)

    def __post_init__(self) -> None:
        if self.scale_factor < 1 or self.iterations < 1 or self.width < 1:
            raise ValueError(f"Zero-DCE++ needs positive width, iterations and scale_factor, got {self}")


def apply_shared_curve(x: torch.Tensor, r: torch.Tensor, iterations: int) -> torch.Tensor:
    """``iterations`` times ``x <- x + r (x^2 - x)`` with the same ``r``; not clamped, as upstream."""
    if torch.is_grad_enabled():
        for _ in range(iterations):
            x = x + r * (x * x - x)
        return x
    y = x.clone()  # inference: two buffers, whatever the number of iterations
    t = torch.empty_like(y)
    for _ in range(iterations):
        torch.mul(y, y, out=t)
        y.addcmul_(r, t.sub_(y))
    return y


class _SeparableConv(nn.Module):
    """Upstream's ``CSDN_Tem``: a depthwise 3x3 convolution, then a pointwise 1x1 one (both biased)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depth_conv = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin)
        self.point_conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class ZeroDCEPP(nn.Module):
    """``forward`` returns the enhanced image, the same size as the input."""

    def __init__(self, config: ZeroDCEPPConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ZeroDCEPPConfig()
        w = cfg.width
        self.e_conv1 = _SeparableConv(3, w)
        self.e_conv2 = _SeparableConv(w, w)
        self.e_conv3 = _SeparableConv(w, w)
        self.e_conv4 = _SeparableConv(w, w)
        self.e_conv5 = _SeparableConv(2 * w, w)
        self.e_conv6 = _SeparableConv(2 * w, w)
        self.e_conv7 = _SeparableConv(2 * w, 3)

    def downscale(self, x: torch.Tensor) -> torch.Tensor:
        """The curve network's input (``x_down`` upstream); H and W must be multiples of ``scale_factor``."""
        s = self.config.scale_factor
        return x if s == 1 else F.interpolate(x, scale_factor=1 / s, mode="bilinear", align_corners=False)

    def curve_lowres(self, x_down: torch.Tensor) -> torch.Tensor:
        """The shared curve map ``r`` in [-1, 1] at the network's resolution (3 channels)."""
        relu = torch.relu
        x1 = relu(self.e_conv1(x_down))
        x2 = relu(self.e_conv2(x1))
        x3 = relu(self.e_conv3(x2))
        x4 = relu(self.e_conv4(x3))
        x5 = relu(self.e_conv5(torch.cat([x3, x4], 1)))
        x6 = relu(self.e_conv6(torch.cat([x2, x5], 1)))
        return torch.tanh(self.e_conv7(torch.cat([x1, x6], 1)))

    def upscale(self, r: torch.Tensor) -> torch.Tensor:
        """``nn.UpsamplingBilinear2d(scale_factor)``: bilinear with align_corners=True."""
        s = self.config.scale_factor
        return r if s == 1 else F.interpolate(r, scale_factor=s, mode="bilinear", align_corners=True)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(enhanced, r at full resolution, r at low resolution, x_down)`` for an input whose H and W
        are multiples of ``scale_factor`` (upstream's cropped input)."""
        s = self.config.scale_factor
        if x.shape[-2] % s or x.shape[-1] % s:
            raise ValueError(f"forward_all needs H and W multiples of {s}, got {tuple(x.shape[-2:])}; use forward")
        x_down = self.downscale(x)
        r_low = self.curve_lowres(x_down)
        r = self.upscale(r_low)
        return apply_shared_curve(x, r, self.config.iterations), r, r_low, x_down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.config.scale_factor
        h, w = x.shape[-2:]
        ph, pw = -h % s, -w % s
        if ph or pw:  # bottom/right only: the blocks keep upstream's top-left-anchored grid
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        r = self.upscale(self.curve_lowres(self.downscale(x)))
        y = apply_shared_curve(x, r, self.config.iterations)
        return y[..., :h, :w] if ph or pw else y


SPEC = register_family(
    FamilySpec(
        name="zero_dce_pp",
        config_cls=ZeroDCEPPConfig,
        model_cls=ZeroDCEPP,
        description="Zero-DCE++ (TPAMI'21): separable curve network at 1/12 resolution, one curve map for 8 iterations",
        signature_keys=frozenset({"e_conv1.depth_conv.weight", "e_conv7.point_conv.weight"}),
        # multiple_of stays 1: the model extends the image itself (bottom/right, see the docstring),
        # which the runner's centred reflection padding would not match
        # not tileable: the upscaling (align_corners=True) stretches the curve map over the whole
        # image, so where a pixel's curve comes from depends on the image's size
        tileable=False,
        tile_exact=False,
        # the input, r and two curve buffers at full resolution (the network's own 1/144 is
        # negligible): 52-54 B/px measured (peak RSS, 1-4 MP)
        activation_bytes=lambda c: 56.0,
    ),
)
