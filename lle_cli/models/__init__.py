"""Model families: one module each; this table is how the registry builds them.

A family spec is the descriptor shared by every model of the family: how to build it from the
manifest's architecture config, and what the runner must know to feed it (size multiple, minimum
size, supported precisions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._cpu import WINOGRAD_MIN_CHANNELS, winograd_workspace_mb
from ..errors import WeightsError
from .illumination_unet import IlluminationUNet, IlluminationUNetConfig
from .llflow import LLFlow, LLFlowConfig
from .zero_dce import ZeroDCE, ZeroDCEConfig

__all__ = ["FamilySpec", "FAMILIES", "build_model", "detect_family", "load_state_strict"]


@dataclass(frozen=True)
class FamilySpec:
    name: str
    config_cls: type
    model_cls: type[nn.Module]
    description: str
    multiple_of: int = 1  # input H and W must be multiples of this
    min_size: int = 1  # smallest H or W the network accepts
    signature_keys: frozenset[str] = frozenset()  # keys that identify a checkpoint of this family
    # Tiling (lle_cli.tiling): an output pixel depends on inputs up to ``tile_margin`` px away through
    # the local layers, so tiles hide that many pixels at every inner edge. ``tile_exact``: tiles
    # reproduce the untiled result up to float rounding. ``tile_multiple``: tile size and position
    # step (strided/squeezing networks). ``activation_bytes(config)``: peak working memory per input
    # pixel of one forward pass in float32, measured as peak RSS (see bench/tiling.py).
    # ``workspace_mb(config)``: memory a pass needs whatever the tile size (MiB).
    # ``decode_bytes(config)``: flows only, what each latent beyond the first adds to a pass that
    # decodes several against one encoder pass (``lle sample``), per input pixel, float32.
    tile_margin: int = 0
    tile_exact: bool = True
    tile_multiple: int = 1
    activation_bytes: Callable[[Any], float] = lambda config: 2048.0
    workspace_mb: Callable[[Any], float] = lambda config: 0.0
    decode_bytes: Callable[[Any], float] = lambda config: 0.0

    def make_config(self, arch: Mapping[str, Any] | None) -> Any:
        arch = dict(arch or {})
        known = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = set(arch) - known
        if unknown:
            raise WeightsError(f"unknown architecture keys for {self.name}: {sorted(unknown)}")
        for k, v in arch.items():  # JSON has lists where the dataclasses use tuples
            if isinstance(v, list):
                arch[k] = tuple(v)
        return self.config_cls(**arch)


FAMILIES: dict[str, FamilySpec] = {
    "illumination_unet": FamilySpec(
        name="illumination_unet",
        config_cls=IlluminationUNetConfig,
        model_cls=IlluminationUNet,
        description="CLIP-LIT/RAVE illumination UNet: enhanced = clamp(x / L(x), 0, 1)",
        min_size=2,  # reflect padding of a 3x3 convolution needs at least 2 pixels
        signature_keys=frozenset({"cond1.weight", "cond_add1.weight", "PPM1.fuse.0.weight"}),
        # 17 stacked 3x3 convolutions (5 before the pyramid pooling, its fuse, 11 after); the pooled
        # context is global, so the tiled runner computes it once on the whole image
        tile_margin=17,
        activation_bytes=lambda c: 50.0 * c.width,  # 1,540-1,560 B/px measured at width 32
    ),
    "zero_dce": FamilySpec(
        name="zero_dce",
        config_cls=ZeroDCEConfig,
        model_cls=ZeroDCE,
        description="Zero-DCE curve-estimation network (8 quadratic curve iterations)",
        signature_keys=frozenset({"e_conv1.weight", "e_conv7.weight"}),
        tile_margin=7,  # 7 stacked 3x3 convolutions: a 15 px receptive field; the curves are pointwise
        activation_bytes=lambda c: 45.0 * c.width,  # 1,408 B/px measured at width 32
    ),
    "llflow": FamilySpec(
        name="llflow",
        config_cls=LLFlowConfig,
        model_cls=LLFlow,
        description="LLFlow conditional normalizing flow (encoder + invertible network); enhance = the latent mean",
        # multiple_of stays 1: the model pads itself (by 1..16 px, symmetric), because its histogram
        # equalisation must see the padded image exactly as upstream's does
        signature_keys=frozenset({"RRDB.conv_first.weight", "RRDB.fine_tune_color_map.0.weight"}),
        # The encoder's RRDB trunk and the flow's couplings reach hundreds of pixels: tiles are not
        # exact, the margin trades accuracy for work; positions keep the 16 px grid of the squeezes.
        tile_margin=64,
        tile_exact=False,
        tile_multiple=16,
        # the worst of 0.7-4 MP inputs (bench/tiling.py's method, glibc keeping freed memory as
        # ``lle enhance`` does): 985 B/px for lol-small (64 conditioning channels), 1,343 for mid (320)
        activation_bytes=lambda c: 900.0 + 1.4 * c.cond_channels,
        # the Winograd convolutions' buffers (lle_cli._cpu.conv3x3), bounded by their row strips
        workspace_mb=lambda c: winograd_workspace_mb() if min(c.nf, c.gc) >= WINOGRAD_MIN_CHANNELS else 0.0,
        decode_bytes=lambda c: 100.0 + 1.0 * c.cond_channels + 2.0 * c.hidden_channels,  # placeholder
    ),
}


def build_model(family: str, arch: Mapping[str, Any] | None = None) -> nn.Module:
    spec = FAMILIES[family]
    return spec.model_cls(spec.make_config(arch))


def detect_family(state: Mapping[str, torch.Tensor]) -> str | None:
    """Recognise a family from a state dict's key names (after ``module.`` is stripped)."""
    for spec in FAMILIES.values():
        if spec.signature_keys <= state.keys():
            return spec.name
    return None


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load weights, turning missing/unexpected keys or wrong shapes into one clear error."""
    # upstream modules a family never calls (e.g. LLFlow's unused heads) are dropped, not built
    ignored = tuple(getattr(model, "ignored_checkpoint_prefixes", ()))
    if ignored:
        state = {k: v for k, v in state.items() if not k.startswith(ignored)}
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"wrong shape for {wrong[0]}: {tuple(state[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)}")
        raise WeightsError(f"{source}: weights do not fit the architecture: {'; '.join(parts)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
