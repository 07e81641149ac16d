"""Generic invertible layers of Glow-style flows, as LLFlow uses them.

The math is in pure functions with an ``inverse`` flag that return ``(output, logdet)``, where
``logdet`` is log|det J| of the map applied (so the inverse returns minus the forward's). Modules only
hold parameters, with upstream's names (``bias``/``logs``, ``weight``), and call the functions.
"""

from __future__ import annotations

import torch
from torch import nn

from .._cpu import conv3x3

__all__ = [
    "Conv2d",
    "squeeze2d",
    "unsqueeze2d",
    "conv1x1",
    "actnorm",
    "invconv1x1",
    "affine",
    "ActNorm",
    "InvertibleConv1x1",
    "Squeeze",
    "ActNormConv2d",
    "ZeroConv2d",
]


def squeeze2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*f*f, H/f, W/f); output channel ``c*f*f + dy*f + dx``."""
    if factor == 1:
        return x
    b, c, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"squeeze2d: {h}x{w} is not divisible by {factor}")
    x = x.view(b, c, h // factor, factor, w // factor, factor)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * factor * factor, h // factor, w // factor)


def unsqueeze2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """The inverse of ``squeeze2d``."""
    if factor == 1:
        return x
    b, c, h, w = x.shape
    f2 = factor * factor
    if c % f2:
        raise ValueError(f"unsqueeze2d: {c} channels are not divisible by {f2}")
    x = x.view(b, c // f2, factor, factor, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // f2, h * factor, w * factor)


def actnorm(x: torch.Tensor, bias: torch.Tensor, logs: torch.Tensor, *, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel affine ``y = (x + bias) * exp(logs)``; log|det| = sum(logs) * H * W (a scalar)."""
    dlogdet = logs.sum() * (x.shape[2] * x.shape[3])
    if not inverse:
        return (x + bias) * torch.exp(logs), dlogdet
    return x * torch.exp(-logs) - bias, -dlogdet


def _inverse_matrix(weight: torch.Tensor) -> torch.Tensor:
    # Upstream inverts in float64 and casts back; MPS has no float64, so invert on the CPU there.
    src = weight.cpu() if weight.device.type == "mps" else weight
    return torch.linalg.inv(src.double()).to(weight.device, weight.dtype)


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution, (B, Cin, H, W) x (Cout, Cin[, 1, 1]) -> (B, Cout, H, W), as a matrix product.

    On the CPU oneDNN's 1x1 convolution is 3-100x slower than this for the narrow layers of a flow.
    """
    b, c, h, w = x.shape
    mat = weight.reshape(weight.shape[0], c)
    flat = x.reshape(b, c, h * w)
    if bias is None:
        return torch.matmul(mat, flat).view(b, -1, h, w)
    return torch.baddbmm(bias.view(1, -1, 1), mat.expand(b, -1, -1), flat).view(b, -1, h, w)


def invconv1x1(x: torch.Tensor, weight: torch.Tensor, *, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Invertible 1x1 convolution (Glow): ``y = W x`` per pixel; log|det| = log|det W| * H * W."""
    dlogdet = torch.linalg.slogdet(weight.float())[1].to(x.dtype) * (x.shape[2] * x.shape[3])
    if not inverse:
        return conv1x1(x, weight.to(x.dtype)), dlogdet
    return conv1x1(x, _inverse_matrix(weight).to(x.dtype)), -dlogdet


def affine(z: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, *, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = (z + shift) * scale`` elementwise (scale > 0); log|det| per sample, shape (B,).

    ``shift``/``scale`` may have batch 1 and broadcast over ``z``'s batch.
    """
    dlogdet = torch.log(scale).sum(dim=(1, 2, 3))
    if not inverse:
        return (z + shift) * scale, dlogdet
    return z / scale - shift, -dlogdet


class ActNorm(nn.Module):
    """Activation normalisation with per-channel ``bias`` and ``logs`` of shape (1, C, 1, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, *, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return actnorm(x, self.bias, self.logs, inverse=inverse)

    @torch.no_grad()
    def initialize_from(self, x: torch.Tensor) -> None:
        """Glow's data-dependent init: zero mean, unit variance per channel for this batch."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True).sqrt()
        self.bias.copy_(-mean)
        self.logs.copy_(torch.log(1.0 / (std + 1e-6)))


class InvertibleConv1x1(nn.Module):
    """``weight`` (C, C), initialised to a random rotation as in Glow."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(channels, channels))[0])

    def forward(self, x: torch.Tensor, *, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return invconv1x1(x, self.weight, inverse=inverse)


class Squeeze(nn.Module):
    """Space-to-depth by 2; volume preserving (log|det| = 0). Holds no parameters."""

    def forward(self, x: torch.Tensor, *, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        zero = x.new_zeros(())
        return (unsqueeze2d(x, 2) if inverse else squeeze2d(x, 2)), zero


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (stride 1, zero padding) whose inference may run as a Winograd convolution
    (``lle_cli._cpu.conv3x3``); same parameters and state-dict keys."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True) -> None:
        if stride != 1:
            raise ValueError("Conv2d here is stride 1 only")
        super().__init__(in_channels, out_channels, kernel_size, 1, padding, bias=bias)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return conv3x3(input, weight, bias, self.padding)


class ActNormConv2d(nn.Conv2d):
    """Zero-padded "same" convolution without bias, followed by an ActNorm (upstream ``flow.Conv2d``).

    Without autograd (inference) the ActNorm is folded into the convolution,
    ``(conv(x, W) + b) * s = conv(x, W * s) + b * s``, which saves two passes over the output;
    with autograd the upstream order of operations is kept.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.normal_(self.weight, 0.0, 0.05)
        self.actnorm = ActNorm(out_channels)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.kernel_size == (1, 1):
            return conv1x1(x, weight, bias)
        return conv3x3(x, weight, bias, self.padding)

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.exp(self.actnorm.logs).view(-1)
        return self.weight * s.view(-1, 1, 1, 1), self.actnorm.bias.view(-1) * s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.actnorm(self._conv(x, self.weight, None))[0]
        return self._conv(x, *self._folded())

    def partial(self, x: torch.Tensor, start: int, *, bias: bool) -> torch.Tensor:
        """The contribution of input channels ``start .. start + C(x)`` to the pre-``finish`` output.

        Convolution is linear in its input channels: ``forward(cat(a, b)) == finish(partial(a, 0,
        bias=False) + partial(b, C(a), bias=True))``. A batch-1 ``b`` (conditioning features) is
        then convolved once and broadcast over ``a``'s batch (latents), and never concatenated.
        """
        weight, b = (self.weight, None) if torch.is_grad_enabled() else self._folded()
        return self._conv(x, weight[:, start : start + x.shape[1]], b if bias else None)

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the ActNorm to a sum of ``partial`` terms (already folded in when inference)."""
        return self.actnorm(y)[0] if torch.is_grad_enabled() else y

    def forward_concat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``forward(cat(parts, 1))`` as a sum of ``partial`` terms (the bias goes with the last part)."""
        out = None
        start = 0
        for i, part in enumerate(parts):
            y = self.partial(part, start, bias=i == len(parts) - 1)
            start += part.shape[1]
            out = y if out is None else out + y
        return self.finish(out)


class ZeroConv2d(nn.Conv2d):
    """Zero-initialised 3x3 convolution with bias whose output is scaled by ``exp(3 * logs)``.

    Without autograd the scale is folded into the weight and bias (one pass less).
    """

    logscale_factor = 3.0

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)
        self.logs = nn.Parameter(torch.zeros(out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.exp(self.logs * self.logscale_factor)
        if torch.is_grad_enabled():
            return super().forward(x) * scale
        s = scale.view(-1)
        return conv3x3(x, self.weight * s.view(-1, 1, 1, 1), self.bias * s, self.padding)
