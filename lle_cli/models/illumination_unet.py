"""Illumination UNet of CLIP-LIT (ICCV'23), reused by RAVE (ECCV'24) and CLIP-LIT-Latent.

The network predicts a one-channel illumination map ``L`` and the enhanced image is the Retinex-style
division ``clamp(x / L, 0, 1)``. Parameter names match the upstream ``UNet_emb_oneBranch_symmetry``
so the authors' checkpoints load after stripping ``module.``.

Padding follows the official code exactly (see shared/golden/NOTES.md): the four outer convolutions
use ``outer_padding`` (reflect in CLIP-LIT and in RAVE's inference), residual-block convolutions are
always reflect-padded, and the pyramid-pooling fuse convolution is zero-padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .family import FamilySpec, register_family

__all__ = ["IlluminationUNetConfig", "IlluminationUNet", "divide_by_illumination"]


@dataclass(frozen=True)
class IlluminationUNetConfig:
    """Architecture; the defaults are the published CLIP-LIT / RAVE model (278,790 parameters)."""

    in_channels: int = 3
    width: int = 32
    pool_bins: tuple[int, ...] = (1, 2, 3, 6)
    pool_reduction: int = 8
    outer_padding: Literal["reflect", "zeros"] = "reflect"


def divide_by_illumination(x: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    """``clamp(x / L, 0, 1)`` as in both official repositories.

    Where ``L`` is exactly 0 the division gives inf (or NaN for 0/0) and the clamp turns it into 1
    (NaN into 0 via ``nan_to_num``), so no non-finite value ever leaves the model.
    """
    if not torch.is_grad_enabled():
        return torch.div(x, light).clamp_(0.0, 1.0).nan_to_num_(nan=0.0)
    return torch.nan_to_num(torch.clamp(x / light, 0.0, 1.0), nan=0.0)


class _ResidualBlock(nn.Module):
    """Two reflect-padded 3x3 convolutions (no bias) with LeakyReLU(0.2) and an identity skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False, padding_mode="reflect")
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # inference: no fresh tensor per activation (page faults on a CPU)
            out = self.conv2(F.leaky_relu_(self.conv1(x), 0.2))
            return F.leaky_relu_(out.add_(x), 0.2)
        out = self.conv2(F.leaky_relu(self.conv1(x), 0.2))
        return F.leaky_relu(out + x, 0.2)


class _PyramidPooling(nn.Module):
    """PSPNet-style pyramid pooling: pooled 1x1-conv branches, bilinear up (align_corners), fuse."""

    def __init__(self, channels: int, reduction: int, bins: tuple[int, ...]) -> None:
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(channels, reduction, 1, bias=False), nn.PReLU())
            for b in bins
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + reduction * len(bins), channels, 3, padding=1, bias=False), nn.PReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        branches = [F.interpolate(f(x), size, mode="bilinear", align_corners=True) for f in self.features]
        return self.fuse(torch.cat([x, *branches], 1))


class IlluminationUNet(nn.Module):
    """``forward`` returns the enhanced image; ``illumination`` returns the map ``L``."""

    def __init__(self, config: IlluminationUNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or IlluminationUNetConfig()
        w, pm = cfg.width, cfg.outer_padding
        self.cond1 = nn.Conv2d(cfg.in_channels, w, 3, 1, 1, bias=True, padding_mode=pm)
        self.cond_add1 = nn.Conv2d(w, 1, 3, 1, 1, bias=True, padding_mode=pm)
        self.condx = nn.Conv2d(w, 2 * w, 3, 1, 1, bias=True, padding_mode=pm)
        self.condy = nn.Conv2d(2 * w, w, 3, 1, 1, bias=True, padding_mode=pm)
        self.ResidualBlock1 = _ResidualBlock(w)
        self.ResidualBlock2 = _ResidualBlock(w)
        self.ResidualBlock3 = _ResidualBlock(2 * w)
        self.ResidualBlock4 = _ResidualBlock(2 * w)
        self.ResidualBlock5 = _ResidualBlock(w)
        self.ResidualBlock6 = _ResidualBlock(w)
        self.PPM1 = _PyramidPooling(w, cfg.pool_reduction, cfg.pool_bins)

    def illumination(self, x: torch.Tensor) -> torch.Tensor:
        act = F.leaky_relu if torch.is_grad_enabled() else F.leaky_relu_
        h = self.ResidualBlock2(self.ResidualBlock1(act(self.cond1(x), 0.2)))
        h = self.condx(self.PPM1(h))
        h = self.condy(self.ResidualBlock4(self.ResidualBlock3(h)))
        h = self.ResidualBlock6(self.ResidualBlock5(h))
        return torch.relu(self.cond_add1(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return divide_by_illumination(x, self.illumination(x))


SPEC = register_family(
    FamilySpec(
        name="illumination_unet",
        config_cls=IlluminationUNetConfig,
        model_cls=IlluminationUNet,
        description="CLIP-LIT/RAVE illumination UNet: enhanced = clamp(x / L(x), 0, 1)",
        min_size=2,  # reflect padding of a 3x3 convolution needs at least 2 pixels
        channels_last=True,
        signature_keys=frozenset({"cond1.weight", "cond_add1.weight", "PPM1.fuse.0.weight"}),
        # 17 stacked 3x3 convolutions (5 before the pyramid pooling, its fuse, 11 after); the pooled
        # context is global, so the tiled runner computes it once on the whole image
        tile_margin=17,
        # measured at width 32 as whole-process peak RSS, a fresh process per run, glibc keeping freed
        # memory as `lle enhance` sets it: 1,280-2,060 B/px untiled at 1-2.1 MP (1,290 at 1 MP without
        # that setting: the spread is the allocator's), ~2,500 per tile pixel in a tiled 8 MP run
        # (the pooled-context pass and the blending on top; bench/tiling.py); the estimate covers
        # that with room, so 8 and 24 MP photos stay under the 2.5 GiB process target
        activation_bytes=lambda c: 84.0 * c.width,
    ),
)
