"""PairLIE, a simple enhancer learnt from paired low-light instances (Fu et al., CVPR 2023).

Three plain convolutional networks of the same shape (net/net.py): five 3x3 convolutions, each after
a one-pixel reflection padding, ReLU between them and a sigmoid at the end. At test time (eval.py):

* ``X = N_net(input)``: the input with its noise removed (3 channels, in (0, 1));
* ``L = L_net(X)``: the illumination (1 channel), ``R = R_net(X)``: the reflectance (3 channels);
* the enhanced image ``I = L ** exponent * R``, the illumination map brightened by a power below 1.

The authors' eval.py hard-codes ``exponent = 0.2`` and says in a comment to use 0.14 for LOL; both
are released here as tags of the one checkpoint (``architecture.exponent``). Every layer is local
(reflection padding only at the image's own edges), so tiles reproduce the whole image exactly.

Key names follow upstream's ``net`` (``N_net.N_net.<i>``, ``L_net.L_net.<i>``, ``R_net.R_net.<i>``,
the Sequential's indices) so the authors' checkpoint loads as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .family import FamilySpec, register_family

__all__ = ["PairLIE", "PairLIEConfig", "PairLIEOutputs"]

LAYERS = 5  # 3x3 convolutions per network


@dataclass(frozen=True)
class PairLIEConfig:
    """Architecture; the defaults are the released PairLIE (weights/PairLIE.pth, eval.py as shipped)."""

    width: int = 64
    exponent: float = 0.2  # I = L ** exponent * R; eval.py's comment: 0.14 for LOL

    def __post_init__(self) -> None:
        if self.width < 1 or not self.exponent > 0:
            raise ValueError(f"PairLIE needs a positive width and exponent, got {self}")

    @property
    def receptive_radius(self) -> int:
        """N_net then L_net/R_net: ten 3x3 convolutions on any path."""
        return 2 * LAYERS


class _Branch(nn.Module):
    """One of upstream's ``N_net``/``L_net``/``R_net``: (reflect-pad, conv 3x3, ReLU) x 4, reflect-pad,
    conv 3x3, sigmoid. The sequential is held under the network's own name, as upstream."""

    def __init__(self, name: str, width: int, out_channels: int) -> None:
        super().__init__()
        self.key = name
        layers: list[nn.Module] = []
        for i in range(LAYERS):
            last = i == LAYERS - 1
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(3 if i == 0 else width, out_channels if last else width, 3, 1, 0)]
            if not last:
                layers.append(nn.ReLU())
        self.add_module(name, nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = getattr(self, self.key)
        if torch.is_grad_enabled():
            return torch.sigmoid(seq(x))
        # inference: the padded copy of each layer's input is freed as soon as the convolution has run
        for layer in seq:
            if isinstance(layer, nn.Conv2d):
                x = layer(F.pad(x, (1, 1, 1, 1), mode="reflect"))
            elif isinstance(layer, nn.ReLU):
                x = x.relu_()
        return x.sigmoid_()


class PairLIEOutputs(NamedTuple):
    enhanced: torch.Tensor  # L ** exponent * R
    illumination: torch.Tensor  # L, 1 channel
    reflectance: torch.Tensor  # R
    denoised: torch.Tensor  # X = N_net(input)


class PairLIE(nn.Module):
    """``forward`` returns the enhanced image; ``forward_all`` also L, R and the denoised input X."""

    def __init__(self, config: PairLIEConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or PairLIEConfig()
        self.L_net = _Branch("L_net", cfg.width, 1)
        self.R_net = _Branch("R_net", cfg.width, 3)
        self.N_net = _Branch("N_net", cfg.width, 3)

    def forward_all(self, x: torch.Tensor) -> PairLIEOutputs:
        denoised = self.N_net(x)
        light = self.L_net(denoised)
        reflectance = self.R_net(denoised)
        return PairLIEOutputs(torch.pow(light, self.config.exponent) * reflectance, light, reflectance, denoised)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.forward_all(x).enhanced
        denoised = self.N_net(x)
        light = self.L_net(denoised).pow_(self.config.exponent)
        return self.R_net(denoised).mul_(light)


SPEC = register_family(
    FamilySpec(
        name="pairlie",
        config_cls=PairLIEConfig,
        model_cls=PairLIE,
        description="PairLIE (CVPR'23): denoise, then illumination L and reflectance R nets; I = L ** e * R",
        signature_keys=frozenset({"L_net.L_net.1.weight", "R_net.R_net.13.weight", "N_net.N_net.13.weight"}),
        min_size=2,  # a one-pixel reflection padding needs two pixels
        # ten 3x3 convolutions on every path (N_net, then L_net or R_net); reflection padding happens
        # only at the image's own edges, which tiles keep: exact tiles
        tile_margin=PairLIEConfig().receptive_radius,
        # channels-last: ~12% less CPU time than NCHW for the 64-channel convolutions, same memory
        channels_last=True,
        # five 64-channel maps at a time (a layer's input, its padded copy, its output, oneDNN's
        # buffers): 1305-1306 B/px measured (peak RSS over the input, channels-last, 1-4 MP)
        activation_bytes=lambda c: 1320.0 * c.width / 64,
    ),
)
