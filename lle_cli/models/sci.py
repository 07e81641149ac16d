"""SCI, Self-Calibrated Illumination (Ma et al., CVPR 2022), as run by the authors' test script.

At test time SCI is only its illumination estimator: three 3x3 convolutions with one weight-shared
residual block, whose sigmoid output is added to the input to give the illumination
``L = clamp(sigmoid(f(x)) + x, 1e-4, 1)``; the enhanced image is the Retinex division
``clamp(x / L, 0, 1)``. The self-calibration module (``calibrate.*``) only guides training, so the
authors' ``Finetunemodel`` drops it, and so do we (``ignored_checkpoint_prefixes``).

Key names follow upstream's ``EnhanceNetwork`` under ``enhance.`` so the released checkpoints load
as they are. Upstream applies the same residual-block module once through ``blocks`` and stores it
twice (``enhance.conv.*`` and ``enhance.blocks.0.*``, identical tensors); we hold it once, as ``conv``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .family import FamilySpec, register_family

__all__ = ["SCIConfig", "SCI", "ILLUMINATION_FLOOR"]

# upstream's lower clamp of the illumination: keeps x / L finite (at most 1e4) before the [0, 1] clamp
ILLUMINATION_FLOOR = 1e-4


@dataclass(frozen=True)
class SCIConfig:
    """Architecture; the default is every released SCI model (easy, medium, difficult)."""

    channels: int = 3  # width of the illumination estimator (``EnhanceNetwork(channels=3)``)


class _IlluminationEstimator(nn.Module):
    """upstream ``EnhanceNetwork(layers=1)``: conv + ReLU, one residual conv-BN-ReLU block, conv + sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Sequentials only to keep upstream's key names (``in_conv.0``, ``conv.1.running_var``, ...)
        self.in_conv = nn.Sequential(nn.Conv2d(3, channels, 3, 1, 1))
        # eps stays PyTorch's 1e-5: the released running_var are ~3e-7..9e-7, far below it, so the
        # eps sets the block's scale and another value changes the output
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels, eps=1e-5))
        self.out_conv = nn.Sequential(nn.Conv2d(channels, 3, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # inference: the same operations, each result reusing its input
            fea = self.in_conv(x).relu_()
            fea.add_(self.conv(fea).relu_())
            return self.out_conv(fea).sigmoid_().add_(x).clamp_(ILLUMINATION_FLOOR, 1.0)
        fea = F.relu(self.in_conv(x))
        fea = fea + F.relu(self.conv(fea))
        return torch.clamp(torch.sigmoid(self.out_conv(fea)) + x, ILLUMINATION_FLOOR, 1.0)


class SCI(nn.Module):
    """``forward`` returns the enhanced image; ``illumination`` returns the map ``L`` (3 channels)."""

    # training-only self-calibration weights, and upstream's second copy of the shared block
    ignored_checkpoint_prefixes = ("calibrate.", "enhance.blocks.")

    def __init__(self, config: SCIConfig | None = None) -> None:
        super().__init__()
        self.config = config or SCIConfig()
        self.enhance = _IlluminationEstimator(self.config.channels)

    def illumination(self, x: torch.Tensor) -> torch.Tensor:
        return self.enhance(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # L >= 1e-4, so the quotient is finite; the clamp is upstream's
        if not torch.is_grad_enabled():
            return torch.div(x, self.enhance(x)).clamp_(0.0, 1.0)
        return torch.clamp(x / self.enhance(x), 0.0, 1.0)


SPEC = register_family(
    FamilySpec(
        name="sci",
        config_cls=SCIConfig,
        model_cls=SCI,
        description="SCI illumination estimator (CVPR'22): enhanced = clamp(x / L(x), 0, 1)",
        signature_keys=frozenset({"enhance.in_conv.0.weight", "enhance.conv.1.running_var", "enhance.out_conv.0.weight"}),
        # three zero-padded 3x3 convolutions (BatchNorm in eval mode is per pixel): exact tiles
        tile_margin=3,
        # channels-last: oneDNN pads a 3-channel NCHW activation to a 16-channel block; NHWC halved
        # both the time and the memory at 4 MP (4.5 -> 2.2 s, 90 -> 38 B/px, one thread)
        channels_last=True,
        activation_bytes=lambda c: 13.0 * c.channels,  # 38 B/px measured (peak RSS, 4 MP) at 3 channels
    ),
)
