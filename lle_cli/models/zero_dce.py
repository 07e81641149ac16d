"""Zero-DCE curve-estimation network (Guo et al., CVPR 2020), as used by SCL-LLE (AAAI'22).

Seven 3x3 convolutions with symmetric skip concatenations predict ``n_iter`` per-pixel RGB curve
parameters ``alpha_k`` in [-1, 1]; the image is then refined ``n_iter`` times with the quadratic
light-enhancement curve ``LE(x) = x + alpha * (x^2 - x)`` (Zero-DCE eq. 2, applied iteratively as in
eq. 4). Key names follow the upstream ``enhance_net_nopool`` so the authors' checkpoints load as-is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .family import FamilySpec, register_family

__all__ = ["ZeroDCEConfig", "ZeroDCE", "apply_curves"]


@dataclass(frozen=True)
class ZeroDCEConfig:
    """Architecture of the curve network; defaults are the published Zero-DCE / SCL-LLE model."""

    width: int = 32
    iterations: int = 8


def apply_curves(x: torch.Tensor, alphas: torch.Tensor, *, keep_every: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the iterated quadratic curve ``x <- x + a_k (x^2 - x)`` for each 3-channel ``a_k``.

    Returns ``(final, intermediate)`` where ``intermediate`` is the image after ``keep_every``
    iterations (the upstream ``enhance_image_1`` uses 4), or ``final`` when ``keep_every`` is 0.
    The result is not clamped, exactly like the official code.
    """
    n = alphas.shape[1] // 3
    if not torch.is_grad_enabled() and not keep_every:
        return _apply_curves_inplace(x, alphas, n), x  # inference: two buffers instead of 3n temporaries
    mid = x
    for k in range(n):
        a = alphas[:, 3 * k : 3 * k + 3]
        x = x + a * (x * x - x)
        if k + 1 == keep_every:
            mid = x
    return x, (mid if keep_every else x)


def _apply_curves_inplace(x: torch.Tensor, alphas: torch.Tensor, n: int) -> torch.Tensor:
    y = x.clone()
    t = torch.empty_like(y)
    for k in range(n):
        torch.mul(y, y, out=t)
        y.addcmul_(alphas[:, 3 * k : 3 * k + 3], t.sub_(y))  # y + a (y^2 - y), as eq. 2
    return y


def _conv_of_concat(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``conv(cat([a, b], 1))`` as the sum of two convolutions over the weight's halves: no copy of
    both inputs into a 2C-channel tensor (a large share of the time on a CPU)."""
    k = a.shape[1]
    w = conv.weight
    y = F.conv2d(a, w[:, :k], conv.bias, conv.stride, conv.padding)
    return y.add_(F.conv2d(b, w[:, k:], None, conv.stride, conv.padding))


class ZeroDCE(nn.Module):
    """Curve-estimation network (``DCE-Net``); ``forward`` returns the enhanced image."""

    def __init__(self, config: ZeroDCEConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ZeroDCEConfig()
        w = cfg.width

        def conv(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, 1, 1, bias=True)

        self.e_conv1 = conv(3, w)
        self.e_conv2 = conv(w, w)
        self.e_conv3 = conv(w, w)
        self.e_conv4 = conv(w, w)
        self.e_conv5 = conv(2 * w, w)
        self.e_conv6 = conv(2 * w, w)
        self.e_conv7 = conv(2 * w, 3 * cfg.iterations)

    def curve_parameters(self, x: torch.Tensor) -> torch.Tensor:
        """The ``3 * iterations`` curve maps ``A`` (tanh output), shape (B, 3n, H, W)."""
        if not torch.is_grad_enabled():
            return self._curve_parameters_inference(x)
        relu = torch.relu
        x1 = relu(self.e_conv1(x))
        x2 = relu(self.e_conv2(x1))
        x3 = relu(self.e_conv3(x2))
        x4 = relu(self.e_conv4(x3))
        x5 = relu(self.e_conv5(torch.cat([x3, x4], 1)))
        x6 = relu(self.e_conv6(torch.cat([x2, x5], 1)))
        return torch.tanh(self.e_conv7(torch.cat([x1, x6], 1)))

    def _curve_parameters_inference(self, x: torch.Tensor) -> torch.Tensor:
        """The same maps without autograd: activations in place, concatenations as split convolutions."""
        x1 = self.e_conv1(x).relu_()
        x2 = self.e_conv2(x1).relu_()
        x3 = self.e_conv3(x2).relu_()
        x4 = self.e_conv4(x3).relu_()
        x5 = _conv_of_concat(self.e_conv5, x3, x4).relu_()
        del x3, x4
        x6 = _conv_of_concat(self.e_conv6, x2, x5).relu_()
        del x2, x5
        return _conv_of_concat(self.e_conv7, x1, x6).tanh_()

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(enhanced after half the iterations, enhanced, curve maps)`` like upstream's forward."""
        r = self.curve_parameters(x)
        final, mid = apply_curves(x, r, keep_every=self.config.iterations // 2)
        return mid, final, r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_curves(x, self.curve_parameters(x))[0]


SPEC = register_family(
    FamilySpec(
        name="zero_dce",
        config_cls=ZeroDCEConfig,
        model_cls=ZeroDCE,
        description="Zero-DCE curve-estimation network (8 quadratic curve iterations)",
        auto_cpu_bf16=True,  # bench/precision.py: bf16 autocast faster, within 1 level on 99.9 %+ of pixels
        channels_last=True,
        signature_keys=frozenset({"e_conv1.weight", "e_conv7.weight"}),
        tile_margin=7,  # 7 stacked 3x3 convolutions: a 15 px receptive field; the curves are pointwise
        activation_bytes=lambda c: 45.0 * c.width,  # 1,408 B/px measured at width 32
    ),
)
