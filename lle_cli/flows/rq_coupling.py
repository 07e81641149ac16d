"""Conditional modified-RQ-spline coupling: the robust flows' drop-in for LLFlow's affine coupling.

Hong et al. (ICCV 2023, Sec. 4) replace every conditional affine coupling of SRFlow / LLFlow with the
two-bin spline of :mod:`lle_cli.flows.rqspline` plus a bias, in both places where LLFlow's
``CondAffineSeparatedAndCond`` transforms ``z``:

1. the *feature injector*: all channels of ``z`` go through a spline whose parameters depend on the
   encoder features ``ft`` only (network ``fFeatures``);
2. optionally, a *std-conditional* half-coupling on the noise level (network ``fRQspline_std``;
   SRFlow-family models use it, LLFlow has no std input and leaves it out);
3. the *self-conditional* half-coupling: the second half of the channels goes through a spline
   whose parameters depend on the first half and ``ft`` (network ``fRQspline``).

The sampling direction runs the inverses in the opposite order. Attribute and sub-module names follow
the authors' ``CondRQsplineSeparatedAndCond`` so their state dicts load as they are (an ``fX.0``
``Conv2d`` + ActNorm, ``fX.2`` 1x1 ``Conv2d`` + ActNorm, ``fX.4`` zero-initialised 3x3 ``Conv2d``): the
coupling networks are built from LLFlow's own ``ActNormConv2d`` and ``ZeroConv2d``, whose parameter
names are the same.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ActNorm, ActNormConv2d, ZeroConv2d, actnorm
from .rqspline import NUM_PARAMS, SplineBounds, spline_shift, unpack_params

__all__ = ["ActNorm2d", "conditioner", "RQSplineCoupling"]


class ActNorm2d(ActNorm):
    """LLFlow's :class:`~lle_cli.flows.layers.ActNorm` with the authors' standalone interface.

    ``forward(x, logdet=None, *, inverse=False) -> (y, logdet)``, and Glow's data-dependent
    initialisation on the first training-mode forward pass (loading a state dict counts as
    initialised). The math is :func:`~lle_cli.flows.layers.actnorm`; inside LLFlow the
    coupling networks use plain ``ActNorm`` (initialised by ``LLFlow.initialize_actnorms``).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.inited = False

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.inited = True

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, logdet: torch.Tensor | None = None, *, inverse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.inited and self.training and not inverse:
            self.initialize_from(x)
            self.inited = True
        y, d = actnorm(x, self.bias, self.logs, inverse=inverse)
        return y, (None if logdet is None else logdet + d)


def conditioner(in_channels: int, out_channels: int, hidden_channels: int, kernel_hidden: int = 1, n_hidden_layers: int = 1) -> nn.Sequential:
    """The coupling network of SRFlow/LLFlow: 3x3 conv, ``n`` hidden ``kernel_hidden`` convs, zero 3x3 conv."""
    layers: list[nn.Module] = [ActNormConv2d(in_channels, hidden_channels, 3), nn.ReLU()]
    for _ in range(n_hidden_layers):
        layers += [ActNormConv2d(hidden_channels, hidden_channels, kernel_hidden), nn.ReLU()]
    layers.append(ZeroConv2d(hidden_channels, out_channels))
    return nn.Sequential(*layers)


class RQSplineCoupling(nn.Module):
    """Conditional RQ-spline coupling (feature injector + self-conditional half-coupling).

    ``forward(z, ft, *, inverse=False, std=None, logdet=None) -> (z', logdet')``, the interface of
    every coupling in lle (LLFlow's affine one included): the density direction maps image-side ``z``
    towards the Gaussian and adds ``log|det dz'/dz|`` to ``logdet`` (zeros when None);
    ``inverse=True`` is the exact inverse (sampling) and adds the inverse's log-determinant, so a
    round trip leaves ``logdet`` unchanged. Features with batch 1 serve a batch of latents.

    ``condition_channels`` is the encoder-feature width (LLFlow: ``conditionInFeaDim``; robustNF's
    SRFlow code hard-codes 320). ``std_channels=None`` leaves out the std-conditional branch.
    """

    def __init__(
        self,
        in_channels: int,
        condition_channels: int = 320,
        hidden_channels: int = 64,
        std_channels: int | None = None,
        n_hidden_layers: int = 1,
        kernel_hidden: int = 1,
        bounds: SplineBounds = SplineBounds(),
    ) -> None:
        super().__init__()
        if in_channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {in_channels}")
        self.in_channels = in_channels
        self.condition_channels = condition_channels
        self.std_channels = std_channels
        self.bounds = bounds
        self.n_keep = in_channels // 2  # z1: conditions the second half, passes through unchanged
        self.n_change = in_channels - self.n_keep
        net = dict(hidden_channels=hidden_channels, kernel_hidden=kernel_hidden, n_hidden_layers=n_hidden_layers)
        self.fRQspline = conditioner(self.n_keep + condition_channels, self.n_change * NUM_PARAMS, **net)
        self.fFeatures = conditioner(condition_channels, in_channels * NUM_PARAMS, **net)
        if std_channels:
            self.fRQspline_std = conditioner(self.n_keep + std_channels, self.n_change * NUM_PARAMS, **net)
        else:
            self.fRQspline_std = None

    def _expand_std(self, std: torch.Tensor, h: int, w: int) -> torch.Tensor:
        # as the authors: a per-image 3-channel map is resized, a scalar is broadcast
        if self.std_channels == 3 and std.shape[1] == 3:
            return F.interpolate(std, size=(h, w), mode="bicubic")
        if std.shape[1] in (1, self.std_channels):
            return std.expand(-1, self.std_channels, h, w)
        raise ValueError(f"std has {std.shape[1]} channels; this coupling takes 1 or {self.std_channels}")

    def _half(
        self, z: torch.Tensor, cond: torch.Tensor, net: nn.Module, logdet: torch.Tensor, inverse: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = z[:, : self.n_keep], z[:, self.n_keep :]
        params = unpack_params(net(torch.cat([z1, cond], dim=1)), self.n_change)
        z2, lad = spline_shift(z2, params, inverse, self.bounds)
        return torch.cat([z1, z2], dim=1), logdet + lad.sum(dim=(1, 2, 3))

    def forward(
        self,
        z: torch.Tensor,
        ft: torch.Tensor | None = None,
        *,
        inverse: bool = False,
        std: torch.Tensor | None = None,
        logdet: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if ft is None:
            raise ValueError("RQSplineCoupling needs the conditioning features ft")
        if ft.shape[0] != z.shape[0]:
            ft = ft.expand(z.shape[0], -1, -1, -1)
        if z.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} channels, got {z.shape[1]}")
        if logdet is None:
            logdet = z.new_zeros(z.shape[0])
        use_std = std is not None and self.fRQspline_std is not None
        std_map = self._expand_std(std, z.shape[2], z.shape[3]) if use_std else None

        if not inverse:
            params = unpack_params(self.fFeatures(ft), self.in_channels)
            z, lad = spline_shift(z, params, False, self.bounds)
            logdet = logdet + lad.sum(dim=(1, 2, 3))
            if std_map is not None:
                z, logdet = self._half(z, std_map, self.fRQspline_std, logdet, False)
            z, logdet = self._half(z, ft, self.fRQspline, logdet, False)
        else:
            z, logdet = self._half(z, ft, self.fRQspline, logdet, True)
            if std_map is not None:
                z, logdet = self._half(z, std_map, self.fRQspline_std, logdet, True)
            params = unpack_params(self.fFeatures(ft), self.in_channels)
            z, lad = spline_shift(z, params, True, self.bounds)
            logdet = logdet + lad.sum(dim=(1, 2, 3))
        return z, logdet
