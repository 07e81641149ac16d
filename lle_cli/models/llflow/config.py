"""Architecture of an LLFlow model as data.

The defaults are the standard model of the paper (upstream ``code/confs/LOL-pc.yml``); the light
model is ``LLFlowConfig(nf=32, nb=4, K=4, stack_blocks=(1,))`` (``LOL_smallNet.yml``). Only the
options the published configurations use are modelled; everything else in the upstream YAML
(``to_yuv``, ``le_curve``, ``encode_color_map``, split layers, ...) is off in all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LLFlowConfig", "LEVELS"]

# Flow levels, each starting with a 2x squeeze. Fixed: the encoder provides conditioning features at
# exactly 1/2, 1/4 and 1/8 resolution (upstream fea_up2, fea_up1, fea_up0).
LEVELS = 3


@dataclass(frozen=True)
class LLFlowConfig:
    """Every field has the value of the standard LOL model (``LOL-pc.yml``, 38.9M parameters upstream)."""

    nf: int = 64  # encoder width
    nb: int = 24  # RRDB blocks in the encoder trunk
    gc: int = 32  # growth channels inside a residual dense block
    K: int = 12  # conditional flow steps per level
    pre_steps: int = 2  # unconditional steps (ActNorm + 1x1 conv) after each squeeze: additionalFlowNoAffine
    hidden_channels: int = 64  # width of the coupling networks
    stack_blocks: tuple[int, ...] = (1, 3, 5, 7)  # RRDB outputs concatenated to every conditioning feature
    coupling: str = "affine"  # conditional coupling class (see coupling.COUPLINGS)
    affine_eps: float = 1e-4  # scale = sigmoid(h + 2) + eps: the floor that bounds an inverse's gain
    concat_histeq: bool = True  # the encoder sees the histogram-equalised image too
    pad_multiple: int = 16  # the official auto_padding: always pads, by 1..16 pixels per axis

    def __post_init__(self) -> None:
        # Raised at manifest-load time for a broken entry, and for a bad user config.
        if min(self.nf, self.nb, self.gc, self.K, self.hidden_channels, self.pad_multiple) < 1:
            raise ValueError("LLFlow sizes (nf, nb, gc, K, hidden_channels, pad_multiple) must be positive")
        if self.pre_steps < 0:
            raise ValueError("pre_steps must be >= 0")
        if any(not 0 <= b < self.nb for b in self.stack_blocks):
            raise ValueError(f"stack_blocks {self.stack_blocks} must index the {self.nb} RRDB blocks")
        if self.pad_multiple % 2**LEVELS:
            raise ValueError(f"pad_multiple must be a multiple of {2**LEVELS}")

    @property
    def cond_channels(self) -> int:
        """Channels of every conditioning feature: encoder width plus the stacked RRDB outputs."""
        return self.nf * (1 + len(self.stack_blocks))

    @property
    def encoder_in_channels(self) -> int:
        """log image (+ histeq) + colour map + noise map."""
        return 3 + (3 if self.concat_histeq else 0) + 6

    @property
    def latent_channels(self) -> int:
        return 3 * 4**LEVELS

    @property
    def downscale(self) -> int:
        """The latent's resolution is the padded image's divided by this."""
        return 2**LEVELS
