"""LLFlow's invertible network Theta (upstream ``FlowUpsamplerNet`` at scale 1).

Three levels; each is a 2x squeeze, ``pre_steps`` unconditional steps (ActNorm -> invertible 1x1
conv) and ``K`` conditional steps (ActNorm -> 1x1 conv -> conditional coupling fed with that level's
encoder feature). There is no split, so the latent has 3 * 4**3 = 192 channels at 1/8 resolution.
``forward`` maps an image to z (training/likelihood direction, paper eq. 3-4); ``reverse`` maps z
back to an image (sampling). The ``layers`` list mirrors upstream's indices, squeezes included, so
checkpoint keys (``layers.<i>.actnorm.bias`` ...) match.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .config import LEVELS, LLFlowConfig
from .coupling import coupling_class
from ...flows.layers import ActNorm, InvertibleConv1x1, Squeeze

__all__ = ["FlowStep", "ConditionalFlow"]


class FlowStep(nn.Module):
    """ActNorm -> invertible 1x1 conv -> (optional) conditional coupling."""

    def __init__(self, channels: int, coupling: nn.Module | None = None) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvertibleConv1x1(channels)
        if coupling is not None:
            self.affine = coupling
        self.conditional = coupling is not None

    def conditioning(self, ft: torch.Tensor) -> object | None:
        """The coupling's ``ft``-only work, if it can be done once ahead (see ``CondAffineCoupling``)."""
        if self.conditional and hasattr(self.affine, "conditioning"):
            return self.affine.conditioning(ft)
        return None

    def forward(
        self, z: torch.Tensor, ft: torch.Tensor | None, *, inverse: bool = False, cond: object | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        extra = {} if cond is None else {"cond": cond}
        if not inverse:
            z, ld = self.actnorm(z)
            z, ld2 = self.invconv(z)
            ld = ld + ld2
            if self.conditional:
                z, ld3 = self.affine(z, ft, **extra)
                ld = ld + ld3
            return z, ld
        ld = z.new_zeros(())
        if self.conditional:
            z, ld = self.affine(z, ft, inverse=True, **extra)
        z, ld2 = self.invconv(z, inverse=True)
        z, ld3 = self.actnorm(z, inverse=True)
        return z, ld + ld2 + ld3


class ConditionalFlow(nn.Module):
    """The invertible network; ``features[l]`` conditions level ``l + 1``."""

    def __init__(self, config: LLFlowConfig) -> None:
        super().__init__()
        cls = coupling_class(config.coupling)
        self.layers = nn.ModuleList()
        self.level_of: list[int] = []  # 0-based level of each layer
        channels = 3
        for level in range(LEVELS):
            channels *= 4
            steps: list[nn.Module] = [Squeeze()]
            steps += [FlowStep(channels) for _ in range(config.pre_steps)]
            steps += [
                FlowStep(channels, cls(in_channels=channels, cond_channels=config.cond_channels,
                                       hidden_channels=config.hidden_channels, config=config))
                for _ in range(config.K)
            ]
            self.layers.extend(steps)
            self.level_of += [level] * len(steps)

    def _step(self, layer: nn.Module, z: torch.Tensor, ft: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(layer, FlowStep):
            return layer(z, ft, inverse=inverse)
        return layer(z, inverse=inverse)

    def forward(self, x: torch.Tensor, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (B, 3, H, W) -> (z (B, 192, H/8, W/8), log|det dz/dx| (B,))."""
        logdet = x.new_zeros(x.shape[0])
        for layer, level in zip(self.layers, self.level_of):
            x, ld = self._step(layer, x, features[level], False)
            logdet = logdet + ld
        return x, logdet

    def reverse(
        self,
        z: torch.Tensor,
        features: list[torch.Tensor],
        *,
        chunk: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """z -> (image, log|det dx/dz|); ``features`` may have batch 1 for a batch of latents.

        ``chunk`` bounds how many latents go through a coupling network at once (its hidden
        activations are what costs memory) while each coupling's conditioning-only work is done
        once per layer for all latents. ``progress(done, total)`` is called after every layer.
        """
        logdet = z.new_zeros(z.shape[0])
        steps = list(zip(reversed(self.layers), reversed(self.level_of)))
        for i, (layer, level) in enumerate(steps):
            ft = features[level]
            if isinstance(layer, FlowStep) and layer.conditional and chunk is not None and z.shape[0] > chunk:
                cond = layer.conditioning(ft)
                parts = [layer(z[k : k + chunk], ft, inverse=True, cond=cond) for k in range(0, z.shape[0], chunk)]
                z = torch.cat([p[0] for p in parts])
                ld = torch.cat([p[1].expand(p[0].shape[0]) for p in parts])
                del cond, parts
            else:
                z, ld = self._step(layer, z, ft, True)
            logdet = logdet + ld
            if progress:
                progress(i + 1, len(steps))
        return z, logdet
