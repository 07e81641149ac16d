"""A loaded model with everything the caller needs to run it on an arbitrary image.

Padding to the family's size constraints, precision, inference mode, clamping and cropping are done
here once instead of in every model or command, and so is tiling: an image whose activations would
not fit the memory budget runs as overlapping tiles blended into one preallocated output
(``lle_cli.tiling``), with each family's global context computed on the whole image first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, NonFiniteError
from .memory import MEMORY_ENV, PROCESS_MEMORY_MB, RUNTIME_MB, available_memory, megabytes_from_env, process_memory_target
from .models import FAMILIES, FamilySpec
from .registry import ModelEntry
from .tiling import AxisTile, TilePlan, pad_amounts, plan_tiles, plan_within_area, reflect_fits, run_tiled, tile_overlap

__all__ = ["LoadedModel", "NonFiniteOutputError", "TILE_MEMORY_ENV", "MEMORY_ENV", "PROCESS_MEMORY_MB", "tile_memory_budget",
           "available_memory", "process_memory_target"]

TILE_MEMORY_ENV = "LLE_TILE_MEMORY_MB"
# Automatic tiling keeps a whole process within ``process_memory_target()`` (lle_cli.memory: half
# the machine's available memory, at least 2.5 GiB, or $LLE_MEMORY_MB): Python, torch and the
# weights take ~0.6 GB, the image's own copies while tiles run (decoded bytes, float input, float
# output) ~32 bytes per pixel, and one pass's activations get the rest, at least 512 MiB. Under the
# bounded 2.5 GiB target a 3 MP photo gets ~1.8 GiB (LLFlow runs it as 3 tiles), a 24 MP one
# ~1.2 GiB (bench/tiling.py measures the peak: under 3 GB for every family).
_RUNTIME_MB = RUNTIME_MB
_IMAGE_BYTES_PER_PIXEL = 32
_MIN_TILE_MEMORY_MB = 512
# the tiles' total area over the image's in a typical automatic plan (the overlaps): what a family's
# ``context_bytes`` is priced at when the planner sets it aside
_CONTEXT_AREA = 1.15


def tile_memory_budget(pixels: int = 0, reserved_mb: float = 0.0) -> int:
    """Bytes of activations one pass may use for an image of ``pixels``: ``$LLE_TILE_MEMORY_MB``, or
    what the process target leaves after the runtime, the model's fixed working buffers
    (``reserved_mb``, see ``FamilySpec.workspace_mb``) and the image's own copies."""
    mb = megabytes_from_env(TILE_MEMORY_ENV)
    if mb is None:
        left = process_memory_target() - _RUNTIME_MB - reserved_mb - _IMAGE_BYTES_PER_PIXEL * pixels / 2**20
        mb = max(left, _MIN_TILE_MEMORY_MB)
    return int(mb * 2**20)


def min_tile_size(family: str) -> int:
    """The smallest tile side a family can run in: twice its overlap (or its minimum input size),
    with the family's margin, which bounds every configuration's (``FamilySpec.tile_reach``)."""
    spec = FAMILIES[family]
    if not spec.tileable:
        return 0  # never tiled: no tile size applies
    return _smallest_tile(spec, spec.tile_margin)


def _overlap(spec: FamilySpec, margin: int) -> int:
    return tile_overlap(margin, spec.tile_multiple, spec.tile_exact)


def _smallest_tile(spec: FamilySpec, margin: int) -> int:
    # stride >= overlap: at most 4x the untiled work
    return max(2 * _overlap(spec, margin), spec.min_size)


class NonFiniteOutputError(NonFiniteError):
    """The network produced NaN or Inf; nothing is written."""


def _pad_amounts(size: int, spec: FamilySpec) -> tuple[int, int]:
    return pad_amounts(size, spec.multiple_of, spec.min_size)


@dataclass
class LoadedModel:
    entry: ModelEntry
    module: nn.Module
    device: torch.device
    dtype: torch.dtype
    weights_source: str
    tile: int | None = None  # None: tile automatically when the image would not fit; 0: never; N: N px
    # bf16 by autocast (``--precision auto`` on a CPU, lle_cli.device): the weights and inputs stay
    # float32 and the convolutions run in bf16; ``dtype`` is then bfloat16, what the run records.
    autocast: bool = False

    @property
    def spec(self) -> FamilySpec:
        return FAMILIES[self.entry.family]

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype the network's input is cast to (float32 under autocast, else ``dtype``)."""
        return torch.float32 if self.autocast else self.dtype

    def precision_scope(self):
        """The context every forward pass runs in: bf16 autocast on the CPU, or nothing."""
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()

    def enhance_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> enhanced (B, 3, H, W) float32 in [0, 1] on the CPU."""
        h, w = x.shape[-2:]
        top, bottom = _pad_amounts(h, self.spec)
        left, right = _pad_amounts(w, self.spec)
        x = x.to(self.device, self.input_dtype)
        if top or bottom or left or right:
            mode = "reflect" if reflect_fits(h, w, top, bottom, left, right) else "replicate"
            x = F.pad(x, (left, right, top, bottom), mode=mode)
        with torch.inference_mode(), self.precision_scope():
            y = self.module(x)
        return self._checked(y[..., top : top + h, left : left + w])

    # -- tiling ------------------------------------------------------------------------------

    def tile_plan(self, height: int, width: int) -> TilePlan | None:
        """The tiles for an image of this size, or None to run it whole (LLFlow: over its padded size).

        ``self.tile``: None chooses from the family's measured activation memory and the budget
        (whole when it fits, else the plan with the least work whose tiles fit); 0 never tiles;
        N uses tiles of at most N px a side.
        """
        # measured in float32; half precision needs less, so this stays on the safe side
        cfg = self.module.config
        per_pixel, context = self.spec.activation_bytes(cfg), self.spec.context_bytes(cfg)
        if context and self.tile is None and self.spec.tileable:
            # a pass that would compute part of the network twice (the UNet's trunk) keeps it instead
            # when that takes at most half the budget: slightly smaller tiles, no repeated work
            h, w = self._tiled_size(height, width)
            budget = self.activation_budget(height, width)
            keep = context * h * w * _CONTEXT_AREA
            if per_pixel * h * w > budget and keep <= budget / 2:
                return self.plan_for(height, width, per_pixel, reserved_bytes=keep)
        return self.plan_for(height, width, per_pixel)

    def plan_for(self, height: int, width: int, per_pixel: float, *, reserved_bytes: float = 0.0) -> TilePlan | None:
        """``tile_plan`` for a pass that needs ``per_pixel`` bytes per (padded) pixel of a tile, with
        ``reserved_bytes`` of the budget already taken by something else (e.g. samples kept in memory).

        ``lle sample`` plans its encoder + multi-latent decode with this, under the same budget and
        rules as ``lle enhance``.
        """
        if self.tile == 0 or not self.spec.tileable:
            return None
        if self.tile is not None:
            return self.explicit_plan(height, width, self.tile)
        spec = self.spec
        h, w = self._tiled_size(height, width)
        budget = self.activation_budget(height, width) - reserved_bytes
        if per_pixel * h * w <= budget:
            return None
        margin = self.tile_margin
        plan = plan_within_area(h, w, int(budget / per_pixel), _overlap(spec, margin), margin, spec.tile_multiple, self._min_tile())
        return plan if plan.tiled else None

    def activation_budget(self, height: int, width: int) -> int:
        """Bytes one pass may use on an image of this size (``tile_memory_budget`` with this model's
        fixed working buffers reserved)."""
        return tile_memory_budget(height * width, self.spec.workspace_mb(self.module.config))

    def explicit_plan(self, height: int, width: int, tile: int) -> TilePlan | None:
        """Tiles of at most ``tile`` px a side (raised to what the overlaps need), or None if one covers it."""
        spec = self.spec
        if not spec.tileable:
            return None
        h, w = self._tiled_size(height, width)
        size = -(-max(tile, self._min_tile()) // spec.tile_multiple) * spec.tile_multiple
        if size >= h and size >= w:
            return None
        margin = self.tile_margin
        return plan_tiles(h, w, size, _overlap(spec, margin), margin, spec.tile_multiple)

    @property
    def tile_margin(self) -> int:
        """The pixels a tile hides at each inner edge for this model's configuration (``tile_reach``),
        else the family's ``tile_margin``."""
        reach = self.spec.tile_reach
        return reach(self.module.config) if reach is not None else self.spec.tile_margin

    def _min_tile(self) -> int:
        return _smallest_tile(self.spec, self.tile_margin)

    def _frame(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right): what the network pads the image by itself before tiling."""
        frame = self.spec.tile_frame
        return frame(self.module.config, height, width) if frame is not None else (0, 0, 0, 0)

    def _tiled_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the tiles cover: the image, or the frame the family pads it to (``tile_frame``)."""
        top, bottom, left, right = self._frame(height, width)
        return height + top + bottom, width + left + right

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, self.input_dtype)

    def _checked(self, y: torch.Tensor) -> torch.Tensor:
        """Network output -> float32 on the CPU in [0, 1]; NaN/Inf is an error, never written."""
        y = y.float().cpu()
        if not torch.isfinite(y).all():
            raise NonFiniteOutputError(
                f"model {self.name} produced NaN/Inf values (precision {str(self.dtype).removeprefix('torch.')}); "
                "try --precision fp32"
            )
        return y.clamp(0.0, 1.0)

    def enhance_tiled(
        self, rgb: np.ndarray, plan: TilePlan | int, *, progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """Enhance (H, W, 3) float32 in [0, 1] tile by tile (``plan``, or tiles of at most that many px);
        the result is a new C-contiguous array."""
        h, w = rgb.shape[:2]
        if isinstance(plan, int):
            th, tw = self._tiled_size(h, w)
            plan = self.explicit_plan(h, w, plan) or plan_tiles(th, tw, max(th, tw), 0, 0)  # one tile: all of it
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        out = np.zeros((h, w, 3), dtype=np.float32)
        with torch.inference_mode(), self.precision_scope():
            if self.spec.tile_pass is not None:  # whole-image context first (the UNet's pooling, LLFlow's equalisation)
                forward = self.spec.tile_pass(self.module, x, plan, self._to_device, self._spare_bytes(h, w, plan))
            else:  # a local network: each tile alone
                forward = lambda r, c: self.module(self._to_device(x[..., r.start : r.stop, c.start : c.stop]))

            def tile(r: AxisTile, c: AxisTile) -> np.ndarray:
                return self._checked(forward(r, c))[0].permute(1, 2, 0).numpy()

            top, _, left, _ = self._frame(h, w)
            return run_tiled(plan, tile, out, offset=(top, left), progress=progress)

    def _spare_bytes(self, height: int, width: int, plan: TilePlan) -> int:
        """What the budget leaves beside one tile's pass: what a ``tile_pass`` may keep between tiles."""
        tile_area = plan.rows[0].size * plan.cols[0].size
        return max(0, int(self.activation_budget(height, width) - self.spec.activation_bytes(self.module.config) * tile_area))

    def check_fits(self, height: int, width: int) -> None:
        """A family that never tiles needs its whole activations at once: refuse, before any work, an
        image whose estimate exceeds the memory this machine has free (the kernel would kill the process)."""
        if self.spec.tileable or self.device.type != "cpu":
            return
        free = available_memory()
        if free is None:
            return
        h, w = (size + sum(_pad_amounts(size, self.spec)) for size in (height, width))
        need = self.spec.activation_bytes(self.module.config) * h * w + self.spec.workspace_mb(self.module.config) * 2**20
        need += _RUNTIME_MB * 2**20 + _IMAGE_BYTES_PER_PIXEL * height * width
        if need > free:
            raise InputError(
                f"a {width}x{height} image needs about {need / 2**30:.1f} GiB with {self.entry.name}, which never tiles "
                f"(it sees the whole image at once); this machine has {free / 2**30:.1f} GiB free: downscale the image "
                "or use a model that tiles (`lle models list`)"
            )

    def enhance_batch(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) float32 in [0, 1] -> enhanced, as one untiled pass (``ModelFrames`` sizes it)."""
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(0, 3, 1, 2)
        return self.enhance_tensor(x).permute(0, 2, 3, 1).numpy()

    def enhance(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1] -> enhanced (H, W, 3) float32 in [0, 1]; tiled when it is large."""
        self.check_fits(*rgb.shape[:2])
        plan = self.tile_plan(*rgb.shape[:2])
        if plan is not None:
            return self.enhance_tiled(rgb, plan)
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        return self.enhance_tensor(x)[0].permute(1, 2, 0).numpy()
