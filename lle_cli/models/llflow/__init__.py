"""LLFlow: low-light enhancement with a conditional normalizing flow (Wang et al., AAAI 2022).

``config`` (architecture as data), ``preprocess`` (padding, histogram equalisation), ``encoder``
(the conditional encoder g), ``layers`` (generic invertible layers), ``coupling`` (conditional
couplings, selectable by name), ``flow`` (the invertible network) and ``model`` (the whole thing).
"""

from __future__ import annotations

from ..._cpu import WINOGRAD_MIN_CHANNELS, winograd_workspace_mb
from ..family import FamilySpec, register_family
from .config import LEVELS, LLFlowConfig
from .coupling import COUPLINGS, CondAffineCoupling, register_coupling
from .encoder import ConditionEncoder, EncoderFeatures
from .flow import ConditionalFlow, FlowStep
from .model import UNUSED_CHECKPOINT_PREFIXES, LLFlow, negative_log_likelihood
from .preprocess import Padding, auto_padding, equalize_hist, network_input, pad_symmetric
from .tiles import LLFlowTiles, tile_frame, tiled_forward

__all__ = [
    "LEVELS",
    "LLFlowConfig",
    "LLFlow",
    "ConditionEncoder",
    "EncoderFeatures",
    "ConditionalFlow",
    "FlowStep",
    "CondAffineCoupling",
    "COUPLINGS",
    "register_coupling",
    "negative_log_likelihood",
    "UNUSED_CHECKPOINT_PREFIXES",
    "Padding",
    "auto_padding",
    "equalize_hist",
    "network_input",
    "pad_symmetric",
    "LLFlowTiles",
]


SPEC = register_family(
    FamilySpec(
        name="llflow",
        config_cls=LLFlowConfig,
        model_cls=LLFlow,
        description="LLFlow conditional normalizing flow (encoder + invertible network); enhance = the latent mean",
        # multiple_of stays 1: the model pads itself (by 1..16 px, symmetric), because its histogram
        # equalisation must see the padded image exactly as upstream's does
        samples=True,
        ood_features=True,
        signature_keys=frozenset({"RRDB.conv_first.weight", "RRDB.fine_tune_color_map.0.weight"}),
        # The encoder's RRDB trunk and the flow's couplings reach hundreds of pixels: tiles are not
        # exact, the margin trades accuracy for work; positions keep the 16 px grid of the squeezes.
        tile_margin=64,
        # The embedded small flows (2 RRDB blocks, one conditioning block) reach less: tiled with a
        # 32-px margin (and blend) a 1536x1024 photo stays within one 8-bit level of the untiled
        # output on all but 0.002 % of its pixels, as with 64 (16 px: 2 levels, 0.6 % off by one);
        # 64 keeps the authors' 24-block encoder safe. Half the overlap: the tiled path costs ~5 %
        # more work at two tiles instead of 10 % (bench/tiling.py).
        tile_reach=lambda c: 32 if c.nb <= 2 and len(c.stack_blocks) <= 1 else 64,
        tile_exact=False,
        tile_multiple=16,
        tile_frame=tile_frame,  # tiles cover the padded image: the histogram equalisation must see it whole
        tile_pass=tiled_forward,
        # Peak over the loaded model (glibc keeping freed memory as ``lle enhance`` does), MB at 0.8 /
        # 3.2 MP, direct convolutions: the embedded spline flow (64 conditioning channels) 560 / 2,046,
        # lol-small (64) 521 / 1,666, mid (320) 798 / 3,775; through Winograd (its buffers are
        # ``workspace_mb``): 727 / 2,498, 765 / 1,994, 1,226 / 3,831. The line below (plus the workspace
        # where Winograd runs) covers each point by 14-50 %.
        activation_bytes=lambda c: 640.0 + 2.2 * c.cond_channels,
        # the Winograd convolutions' buffers (lle_cli._cpu.conv3x3), bounded by their row strips
        workspace_mb=lambda c: winograd_workspace_mb() if min(c.nf, c.gc) >= WINOGRAD_MIN_CHANNELS else 0.0,
        # per latent beyond the first in one decode pass (``lle sample``; peak RSS over the baseline,
        # a fresh process per run). The affine coupling shares its conditioning across latents:
        # 143 B/px at 0.25 MP, 45-104 at 0.8 MP for 32-64 hidden channels. The spline coupling
        # expands the features per latent and runs its feature network on each: 688 B/px at 0.25 MP,
        # 460 at 0.8 MP and 371 at 1.9 MP with 64 conditioning channels, 447 at 0.8 MP with 192.
        # Small images cost more per pixel; the estimates cover them (``sampling`` also caps a pass).
        decode_bytes=lambda c: (700.0 + 0.5 * c.cond_channels) if c.coupling == "rqs" else 96.0 + 1.5 * c.hidden_channels,
    ),
)
