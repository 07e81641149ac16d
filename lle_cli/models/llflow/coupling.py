"""Conditional coupling layers, selected by name (``LLFlowConfig.coupling``).

A coupling class is built as ``cls(in_channels=C, cond_channels=D, hidden_channels=H, config=cfg)``
and called as ``layer(z, ft, inverse=False) -> (output, logdet)`` with ``logdet`` of shape (B,).
``ft`` (the encoder feature of the layer's level) may have batch 1 while ``z`` has batch n: the
conditioning-only work is then done once for all n samples.

``"affine"`` is LLFlow's own coupling; ``"rqs"`` is the robust flows' rational-quadratic spline
coupling (Hong et al., ICCV 2023) from :mod:`lle_cli.flows.rq_coupling`, adapted to this interface
and imported on first use. Other couplings can be added with ``register_coupling``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ...flows.layers import ActNormConv2d, ZeroConv2d, affine
from ...flows.rq_coupling import RQSplineCoupling

__all__ = ["CondAffineCoupling", "COUPLINGS", "register_coupling", "coupling_class", "coupling_net", "run_concat"]

COUPLINGS: dict[str, type[nn.Module]] = {}


def register_coupling(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        COUPLINGS[name] = cls
        return cls

    return deco


def coupling_class(name: str) -> type[nn.Module]:
    if name not in COUPLINGS:
        raise ValueError(f"unknown coupling {name!r}; known: {sorted(COUPLINGS)}")
    return COUPLINGS[name]


def coupling_net(in_channels: int, out_channels: int, hidden_channels: int) -> nn.Sequential:
    """Upstream ``F()``: 3x3 conv + ActNorm, ReLU, 1x1 conv + ActNorm, ReLU, zero-initialised 3x3 conv.

    Zero-initialised output makes a fresh coupling start close to the identity.
    """
    return nn.Sequential(
        ActNormConv2d(in_channels, hidden_channels, 3),
        nn.ReLU(inplace=True),
        ActNormConv2d(hidden_channels, hidden_channels, 1),
        nn.ReLU(inplace=True),
        ZeroConv2d(hidden_channels, out_channels),
    )


def run_concat(net: nn.Sequential, parts: list[torch.Tensor]) -> torch.Tensor:
    """``net(cat(parts, 1))`` without building the concatenation.

    The first convolution runs per part and sums (it is linear in its input channels): the wide
    conditioning feature is never copied (1 GB per coupling at 2048x1536 for the standard model),
    and a batch-1 feature is convolved once for a whole batch of latents. Equal to upstream's
    concatenation up to float rounding (the parity tests run this path).
    """
    first, *rest = net
    h = first.forward_concat(parts)
    for layer in rest:
        h = layer(h)
    return h


@register_coupling("affine")
class CondAffineCoupling(nn.Module):
    """LLFlow's conditional affine coupling (upstream ``CondAffineSeparatedAndCond``).

    Forward: a feature injector ``z = (z + t(ft)) * s(ft)`` on every channel, then a self-conditional
    coupling ``z2 = (z2 + t(z1, ft)) * s(z1, ft)`` on the second half. Both scales are
    ``sigmoid(h + 2) + eps`` with shift/scale taken from the even/odd output channels.
    """

    def __init__(self, in_channels: int, cond_channels: int, hidden_channels: int, config: object | None = None) -> None:
        super().__init__()
        self.eps = float(getattr(config, "affine_eps", 1e-4))
        self.n_keep = in_channels // 2  # z1: conditions the second half, passes through unchanged
        n_change = in_channels - self.n_keep
        self.fAffine = coupling_net(self.n_keep + cond_channels, 2 * n_change, hidden_channels)
        self.fFeatures = coupling_net(cond_channels, 2 * in_channels, hidden_channels)

    def _shift_scale(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0) + self.eps

    def conditioning(self, ft: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Everything that depends on ``ft`` alone: the injector's shift and scale, and ``ft``'s term
        of the self-conditional net's first convolution. Computed once, it serves any number of
        latents (``forward(..., cond=...)``), in as many chunks as memory requires.
        """
        shift_ft, scale_ft = self._shift_scale(self.fFeatures(ft))
        return shift_ft, scale_ft, self.fAffine[0].partial(ft, self.n_keep, bias=True)

    def _self_params(self, z1: torch.Tensor, ft_term: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first, *rest = self.fAffine
        h = first.finish(first.partial(z1, 0, bias=False) + ft_term)
        for layer in rest:
            h = layer(h)
        return self._shift_scale(h)

    def forward(
        self, z: torch.Tensor, ft: torch.Tensor, *, inverse: bool = False, cond: tuple[torch.Tensor, ...] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shift_ft, scale_ft, ft_term = cond if cond is not None else self.conditioning(ft)
        if not inverse:
            z, ld_ft = affine(z, shift_ft, scale_ft)
            z1, z2 = z[:, : self.n_keep], z[:, self.n_keep :]
            z2, ld = affine(z2, *self._self_params(z1, ft_term))
            return torch.cat([z1, z2], dim=1), ld_ft + ld
        z1, z2 = z[:, : self.n_keep], z[:, self.n_keep :]
        z2, ld = affine(z2, *self._self_params(z1, ft_term), inverse=True)
        z, ld_ft = affine(torch.cat([z1, z2], dim=1), shift_ft, scale_ft, inverse=True)
        return z, ld + ld_ft


@register_coupling("rqs")
class RQSCoupling(RQSplineCoupling):
    """The robust flows' spline coupling (Hong et al., ICCV 2023) with LLFlow's constructor."""

    def __init__(self, in_channels: int, cond_channels: int, hidden_channels: int, config: object | None = None) -> None:
        super().__init__(in_channels, condition_channels=cond_channels, hidden_channels=hidden_channels)
