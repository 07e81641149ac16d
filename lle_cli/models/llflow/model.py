"""LLFlow (Wang et al., AAAI 2022): a conditional normalizing flow for low-light enhancement.

An encoder g turns the low-light image into conditioning features and a colour map g(x_l); the
invertible network maps a normally exposed image x to z ~ N(squeeze(g(x_l)), 1) (paper eq. 7-8).
Enhancement decodes z = squeeze(g(x_l)) (the mean, tau = 0); sampling decodes
``squeeze(g(x_l)) + tau * eps + offset`` (Sec. 3.2 "sampling strategy", Fig. 6's brightness sweep).

The encoder runs once per image and the decoder accepts a batch of latents against batch-1
features, so n samples cost one encoder pass (see ``lle_cli.sampling``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .config import LLFlowConfig
from .encoder import ConditionEncoder, EncoderFeatures
from .flow import ConditionalFlow
from ...flows.layers import ActNorm, squeeze2d
from .preprocess import Padding, network_input, pad_symmetric

__all__ = ["LLFlow", "negative_log_likelihood", "UNUSED_CHECKPOINT_PREFIXES"]

# Upstream modules that its forward pass never calls (verified with hooks when the golden fixtures
# were made); their keys are dropped when a checkpoint is loaded and they are not built here.
UNUSED_CHECKPOINT_PREFIXES = (
    "RRDB.downconv3.",
    "RRDB.HRconv.",
    "RRDB.conv_last.",
    "RRDB.awb_para.",
    "flowUpsamplerNet.f.",
)

_LOG2PI = math.log(2 * math.pi)


def negative_log_likelihood(z: torch.Tensor, mean: torch.Tensor, logdet: torch.Tensor, pixels: int) -> torch.Tensor:
    """Bits per pixel: ``-(logdet + log N(z; mean, 1)) / (log 2 * pixels)`` (paper eq. 4 and 8)."""
    logp = (-0.5 * ((z - mean) ** 2 + _LOG2PI)).sum(dim=(1, 2, 3))
    return -(logdet + logp) / (math.log(2.0) * pixels)


class LLFlow(nn.Module):
    """``forward`` enhances (B, 3, H, W) RGB in [0, 1] of any size (tau = 0; unclamped, cropped back)."""

    ignored_checkpoint_prefixes = UNUSED_CHECKPOINT_PREFIXES

    def __init__(self, config: LLFlowConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or LLFlowConfig()
        self.RRDB = ConditionEncoder(cfg)
        self.flowUpsamplerNet = ConditionalFlow(cfg)

    # -- the pieces, for sampling, likelihoods and tests -------------------------------------

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, Padding]:
        """RGB in [0, 1] -> the padded network input ``lq`` and the padding to undo afterwards."""
        return network_input(x, multiple=self.config.pad_multiple, histeq=self.config.concat_histeq)

    def condition(self, lq: torch.Tensor) -> EncoderFeatures:
        """One encoder pass: the conditioning pyramid and g(x_l)."""
        return self.RRDB(lq)

    def latent_mean(self, features: EncoderFeatures) -> torch.Tensor:
        """``squeeze2d(g(x_l), 8)``: the mean of the latent, (B, 192, Hp/8, Wp/8)."""
        return squeeze2d(features.color_map, self.config.downscale)

    def decode(
        self,
        features: EncoderFeatures,
        z: torch.Tensor,
        *,
        chunk: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (n, 192, h, w) -> padded images (n, 3, Hp, Wp) and log|det dx/dz|.

        ``features`` may hold one image for a batch of n latents of that image; ``chunk`` caps the
        latents a coupling network processes at once (memory), see ``ConditionalFlow.reverse``.
        """
        return self.flowUpsamplerNet.reverse(z, features.levels, chunk=chunk, progress=progress)

    def decode_bytes_per_sample(self, height: int, width: int) -> int:
        """Rough working memory one more latent adds to a ``decode`` batch at this padded size.

        Dominated by the coupling networks at level 1 (half resolution): a few hidden-width
        activations plus the latent itself, in 4-byte floats.
        """
        level1 = (height // 2) * (width // 2)
        return level1 * 4 * (3 * self.config.hidden_channels + 10 * 12)

    def encode(self, gt: torch.Tensor, features: EncoderFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """A normally exposed image at the padded size -> (z, log|det dz/dx|): the likelihood direction."""
        return self.flowUpsamplerNet(gt, features.levels)

    def nll(self, gt: torch.Tensor, features: EncoderFeatures, *, mean: torch.Tensor | None = None) -> torch.Tensor:
        """Bits per pixel of ``gt`` under the model (mean: g(x_l) unless given, e.g. C(x_ref))."""
        z, logdet = self.encode(gt, features)
        mu = self.latent_mean(features) if mean is None else mean
        return negative_log_likelihood(z, mu, logdet, gt.shape[2] * gt.shape[3])

    def block_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every RRDB block's output for RGB input in [0, 1], concatenated (for OOD scores)."""
        return self.RRDB.block_features(self.prepare(x)[0])

    # -- enhancement -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lq, pad = self.prepare(x)
        features = self.condition(lq)
        out, _ = self.decode(features, self.latent_mean(features))
        return pad.crop(out)

    def initialize_actnorms(self, x: torch.Tensor | None, gt: torch.Tensor, *, lq: torch.Tensor | None = None) -> None:
        """Glow's data-dependent ActNorm initialisation from one (low, normal) batch, like upstream's
        first training step: each ActNorm normalises its input batch in the forward direction.

        Useful for fresh models (training, benchmarks): random coupling nets otherwise make the
        inverse explode. Training passes its own network input ``lq`` (crops whose histogram
        equalisation saw the full image) with ``gt`` at the same size, and ``x=None``.
        """
        hooks = []

        def pre_hook(module: nn.Module, args: tuple) -> None:
            module.initialize_from(args[0])

        for m in self.modules():
            if isinstance(m, ActNorm):
                hooks.append(m.register_forward_pre_hook(pre_hook))
        try:
            # with autograd on, every ActNorm runs as a module (inference folds some into convolutions)
            with torch.enable_grad():
                if lq is None:
                    lq, pad = self.prepare(x)
                    gt = pad_symmetric(gt, pad)
                self.encode(gt, self.condition(lq))
        finally:
            for h in hooks:
                h.remove()

