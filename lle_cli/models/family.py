"""The family descriptor: everything lle's machinery needs to know about a model family.

Each family module (``zero_dce``, ``illumination_unet``, ``llflow``, ...) describes itself with one
``FamilySpec`` and registers it with ``register_family``; the registry, the runner, tiling, sampling,
OOD scoring and the tests read these descriptors instead of knowing families by name. Adding a
family is one module that registers itself, plus its manifest entries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ..tiling import AxisTile, TilePlan

# One tile's network output (1, 3, rows, cols) for the rows ``r`` and columns ``c`` of the tiled frame.
TileForward = Callable[["AxisTile", "AxisTile"], torch.Tensor]

from ..errors import WeightsError

__all__ = ["FamilySpec", "FAMILIES", "TileForward", "register_family"]


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
    # ``tileable``: False when every output pixel depends on the whole image (a global branch, a curve
    # map stretched over the image): the family always runs whole and bounds its memory itself.
    tileable: bool = True
    tile_margin: int = 0
    # ``tile_reach(config)``: the margin for one configuration where it differs from ``tile_margin``
    # (which then bounds every configuration's: ``--tile`` is checked against it before loading)
    tile_reach: Callable[[Any], int] | None = None
    tile_exact: bool = True
    tile_multiple: int = 1
    # ``tile_frame(config, height, width)``: (top, bottom, left, right) pixels the network pads the
    # image by itself; tiles then cover that padded frame (LLFlow). None: tiles cover the image.
    # ``tile_pass(module, x, plan, to_device, keep_bytes)``: for a network with whole-image context,
    # computes the context over ``plan`` (x: (1, 3, H, W) float32 on the CPU) and returns the per-tile
    # forward; ``to_device`` moves a CPU tensor to the model's device and dtype; ``keep_bytes``: what
    # it may hold between its passes besides one tile's work (intermediate features it would
    # otherwise compute twice). None: each tile runs alone.
    # ``context_bytes(config)``: per pixel of the tiles, what such a pass would keep to compute
    # nothing twice; the planner sets that much aside when it is a small part of the budget.
    tile_frame: Callable[[Any, int, int], tuple[int, int, int, int]] | None = None
    tile_pass: Callable[[nn.Module, torch.Tensor, "TilePlan", Callable[[torch.Tensor], torch.Tensor], int], TileForward] | None = None
    context_bytes: Callable[[Any], float] = lambda config: 0.0
    activation_bytes: Callable[[Any], float] = lambda config: 2048.0
    workspace_mb: Callable[[Any], float] = lambda config: 0.0
    decode_bytes: Callable[[Any], float] = lambda config: 0.0
    # What the machinery does with it: channels-last convolutions on the CPU (lle_cli._cpu);
    # ``samples``: a conditional flow that ``lle sample`` can draw from; ``ood_features``: an
    # encoder whose features ``lle score-ood`` scores (lle_cli.ood).
    channels_last: bool = False
    # ``--precision auto`` on a CPU with native bf16 runs the family in bf16 only when this is True:
    # set where bench/precision.py measured it at most AUTO_BF16_MAX_RATIO of float32's time and
    # within one 8-bit level on AUTO_BF16_WITHIN1 of the pixels (lle_cli.device).
    auto_cpu_bf16: bool = False
    samples: bool = False
    ood_features: bool = False

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



FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Make a family known to lle (called once, by the family's own module)."""
    if spec.name in FAMILIES and FAMILIES[spec.name] is not spec:
        raise ValueError(f"model family {spec.name!r} is registered twice")
    FAMILIES[spec.name] = spec
    return spec
