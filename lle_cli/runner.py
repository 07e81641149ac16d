"""A loaded model with everything the caller needs to run it on an arbitrary image.

Padding to the family's size constraints, precision, inference mode, clamping and cropping are done
here once instead of in every model or command, and so is tiling: an image whose activations would
not fit the memory budget runs as overlapping tiles blended into one preallocated output
(``lle_cli.tiling``), with each family's global context computed on the whole image first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import NonFiniteError, UsageError
from .models import FAMILIES, FamilySpec
from .models.illumination_unet import divide_by_illumination
from .models.llflow.preprocess import Padding, auto_padding, log_image, quantize_u8
from .registry import ModelEntry
from .tiling import AxisTile, TilePlan, plan_tiles, plan_within_area, run_tiled, tile_overlap

__all__ = ["LoadedModel", "LLFlowTiles", "NonFiniteOutputError", "TILE_MEMORY_ENV", "PROCESS_MEMORY_MB", "tile_memory_budget"]

TILE_MEMORY_ENV = "LLE_TILE_MEMORY_MB"
# Automatic tiling keeps a whole ``lle enhance`` process near this many MiB: Python, torch and the
# weights take ~0.6 GB, the image's own copies while tiles run (decoded bytes, float input, float
# output) ~32 bytes per pixel, and one pass's activations get the rest, at least 512 MiB. A 3 MP
# photo gets ~1.8 GiB (LLFlow runs it as 3 tiles, not 12), a 24 MP one ~1.2 GiB (bench/tiling.py
# measures the peak: under 3 GB for every family).
PROCESS_MEMORY_MB = 2560
_RUNTIME_MB = 640
_IMAGE_BYTES_PER_PIXEL = 32
_MIN_TILE_MEMORY_MB = 512


def tile_memory_budget(pixels: int = 0, reserved_mb: float = 0.0) -> int:
    """Bytes of activations one pass may use for an image of ``pixels``: ``$LLE_TILE_MEMORY_MB``, or
    what the process target leaves after the runtime, the model's fixed working buffers
    (``reserved_mb``, see ``FamilySpec.workspace_mb``) and the image's own copies."""
    raw = os.environ.get(TILE_MEMORY_ENV, "").strip()
    if not raw:
        left = PROCESS_MEMORY_MB - _RUNTIME_MB - reserved_mb - _IMAGE_BYTES_PER_PIXEL * pixels / 2**20
        return int(max(left, _MIN_TILE_MEMORY_MB) * 2**20)
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise UsageError(f"{TILE_MEMORY_ENV}={raw!r}: expected a positive number of megabytes")
    return int(mb * 2**20)


def min_tile_size(family: str) -> int:
    """The smallest tile side a family can run in: twice its overlap (or its minimum input size)."""
    spec = FAMILIES[family]
    return max(2 * tile_overlap(spec.tile_margin, spec.tile_multiple), spec.min_size)


class NonFiniteOutputError(NonFiniteError):
    """The network produced NaN or Inf; nothing is written."""


def _pad_amounts(size: int, spec: FamilySpec) -> tuple[int, int]:
    target = max(size, spec.min_size)
    target = -(-target // spec.multiple_of) * spec.multiple_of
    extra = target - size
    return extra // 2, extra - extra // 2


@dataclass
class LoadedModel:
    entry: ModelEntry
    module: nn.Module
    device: torch.device
    dtype: torch.dtype
    weights_source: str
    tile: int | None = None  # None: tile automatically when the image would not fit; 0: never; N: N px

    @property
    def spec(self) -> FamilySpec:
        return FAMILIES[self.entry.family]

    @property
    def name(self) -> str:
        return self.entry.name

    def enhance_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> enhanced (B, 3, H, W) float32 in [0, 1] on the CPU."""
        h, w = x.shape[-2:]
        top, bottom = _pad_amounts(h, self.spec)
        left, right = _pad_amounts(w, self.spec)
        x = x.to(self.device, self.dtype)
        if top or bottom or left or right:
            # reflect needs more pixels than it pads; tiny images fall back to edge replication
            mode = "reflect" if min(h, w) > max(top, bottom, left, right) else "replicate"
            x = F.pad(x, (left, right, top, bottom), mode=mode)
        with torch.inference_mode():
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
        return self.plan_for(height, width, self.spec.activation_bytes(self.module.config))

    def plan_for(self, height: int, width: int, per_pixel: float, *, reserved_bytes: float = 0.0) -> TilePlan | None:
        """``tile_plan`` for a pass that needs ``per_pixel`` bytes per (padded) pixel of a tile, with
        ``reserved_bytes`` of the budget already taken by something else (e.g. samples kept in memory).

        ``lle sample`` plans its encoder + multi-latent decode with this, under the same budget and
        rules as ``lle enhance``.
        """
        if self.tile == 0:
            return None
        if self.tile is not None:
            return self.explicit_plan(height, width, self.tile)
        spec = self.spec
        h, w = self._tiled_size(height, width)
        budget = self.activation_budget(height, width) - reserved_bytes
        if per_pixel * h * w <= budget:
            return None
        overlap = tile_overlap(spec.tile_margin, spec.tile_multiple)
        plan = plan_within_area(h, w, int(budget / per_pixel), overlap, spec.tile_margin, spec.tile_multiple, self._min_tile())
        return plan if plan.tiled else None

    def activation_budget(self, height: int, width: int) -> int:
        """Bytes one pass may use on an image of this size (``tile_memory_budget`` with this model's
        fixed working buffers reserved)."""
        return tile_memory_budget(height * width, self.spec.workspace_mb(self.module.config))

    def explicit_plan(self, height: int, width: int, tile: int) -> TilePlan | None:
        """Tiles of at most ``tile`` px a side (raised to what the overlaps need), or None if one covers it."""
        spec = self.spec
        h, w = self._tiled_size(height, width)
        size = -(-max(tile, self._min_tile()) // spec.tile_multiple) * spec.tile_multiple
        if size >= h and size >= w:
            return None
        return plan_tiles(h, w, size, tile_overlap(spec.tile_margin, spec.tile_multiple), spec.tile_margin, spec.tile_multiple)

    def _min_tile(self) -> int:
        # stride >= overlap: at most 4x the untiled work
        return min_tile_size(self.spec.name)

    def _tiled_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the tiles cover: LLFlow tiles its padded image, the others the image itself."""
        if self.entry.family == "llflow":
            pad = auto_padding(height, width, self.module.config.pad_multiple)
            return height + pad.top + pad.bottom, width + pad.left + pad.right
        return height, width

    def _run_tile(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            y = self.module(x)
        return self._checked(y)

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
        family = self.entry.family
        if family == "llflow":
            return _llflow_tiled(self, x, plan, out, progress)

        def crop(r: AxisTile, c: AxisTile) -> torch.Tensor:
            return x[..., r.start : r.stop, c.start : c.stop].to(self.device, self.dtype)

        if family == "illumination_unet":
            context = _PooledContext.compute(self, plan, crop)
            fn = lambda r, c: self._checked(context.forward(crop(r, c), r, c))
        else:  # a local network: each tile alone
            fn = lambda r, c: self._run_tile(crop(r, c))
        return run_tiled(plan, lambda r, c: fn(r, c)[0].permute(1, 2, 0).numpy(), out, progress=progress)

    def enhance(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1] -> enhanced (H, W, 3) float32 in [0, 1]; tiled when it is large."""
        plan = self.tile_plan(*rgb.shape[:2])
        if plan is not None:
            return self.enhance_tiled(rgb, plan)
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        return self.enhance_tensor(x)[0].permute(1, 2, 0).numpy()


# -- illumination UNet: the pyramid-pooled context of the whole image, fed to every tile -------


def _unet_trunk(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layers before the pyramid pooling (``IlluminationUNet.illumination``'s first line)."""
    return m.ResidualBlock2(m.ResidualBlock1(F.leaky_relu(m.cond1(x), 0.2)))


def _unet_head(m: nn.Module, x: torch.Tensor, h: torch.Tensor, branches: list[torch.Tensor]) -> torch.Tensor:
    """The rest of ``IlluminationUNet.forward`` with the pooled branches given instead of computed."""
    h = m.condx(m.PPM1.fuse(torch.cat([h, *branches], 1)))
    h = m.condy(m.ResidualBlock4(m.ResidualBlock3(h)))
    h = m.ResidualBlock6(m.ResidualBlock5(h))
    return divide_by_illumination(x, torch.relu(m.cond_add1(h)))


def _bin_matrix(n: int, bins: int) -> np.ndarray:
    """(bins, n) 0/1 membership of ``AdaptiveAvgPool`` bins: [floor(i n / b), ceil((i+1) n / b))."""
    m = np.zeros((bins, n), dtype=np.float64)
    for i in range(bins):
        m[i, (i * n) // bins : -(-((i + 1) * n) // bins)] = 1.0
    return m


def _upsample_matrix(start: int, stop: int, n: int, bins: int) -> np.ndarray:
    """(stop - start, bins) weights of ``interpolate(bilinear, align_corners=True)`` from ``bins`` to ``n``
    for output rows ``start:stop``."""
    pos = np.arange(start, stop, dtype=np.float64)
    src = pos * ((bins - 1) / (n - 1)) if n > 1 else np.zeros_like(pos)
    i0 = np.clip(np.floor(src).astype(np.int64), 0, bins - 1)
    i1 = np.minimum(i0 + 1, bins - 1)
    frac = src - i0
    m = np.zeros((stop - start, bins), dtype=np.float64)
    np.add.at(m, (np.arange(len(pos)), i0), 1.0 - frac)
    np.add.at(m, (np.arange(len(pos)), i1), frac)
    return m


@dataclass
class _PooledContext:
    """The UNet's pyramid-pooling branches (bins 1, 2, 3, 6 after their 1x1 conv + PReLU) for the whole image.

    Pass 1 runs only the trunk on every tile and adds each tile's blend-weighted trunk features into
    the bins' sums; because the weights sum to 1 and vanish where a tile is wrong, the sums are the
    whole image's, so the pooled values equal ``AdaptiveAvgPool2d`` on the untiled trunk output.
    """

    model: LoadedModel
    height: int
    width: int
    pooled: list[torch.Tensor]  # per bin count: (1, C, b, b) after conv + PReLU

    @classmethod
    def compute(cls, model: LoadedModel, plan: TilePlan, crop: Callable[[AxisTile, AxisTile], torch.Tensor]) -> _PooledContext:
        m = model.module
        bins = m.config.pool_bins
        h_n, w_n = plan.height, plan.width
        rows = [_bin_matrix(h_n, b) for b in bins]
        cols = [_bin_matrix(w_n, b) for b in bins]
        sums = [np.zeros((m.config.width, b, b), dtype=np.float64) for b in bins]
        for r, c in plan:
            with torch.inference_mode():
                feat = _unet_trunk(m, crop(r, c))[0].float().cpu()
            for k in range(len(bins)):
                ry = torch.from_numpy((rows[k][:, r.start : r.stop] * r.weights).astype(np.float32))
                rx = torch.from_numpy((cols[k][:, c.start : c.stop] * c.weights).astype(np.float32))
                sums[k] += torch.einsum("iy,cyx,jx->cij", ry, feat, rx).double().numpy()
        pooled = []
        for k, b in enumerate(bins):
            counts = rows[k].sum(1)[:, None] * cols[k].sum(1)[None, :]
            mean = torch.from_numpy(sums[k] / counts)[None].to(model.device, model.dtype)
            with torch.inference_mode():
                pooled.append(m.PPM1.features[k][1:](mean))  # the branch after its pooling layer
        return cls(model, h_n, w_n, pooled)

    def branches(self, r: AxisTile, c: AxisTile) -> list[torch.Tensor]:
        out = []
        for p in self.pooled:
            b = p.shape[-1]
            ay = torch.from_numpy(_upsample_matrix(r.start, r.stop, self.height, b)).to(p.device, p.dtype)
            ax = torch.from_numpy(_upsample_matrix(c.start, c.stop, self.width, b)).to(p.device, p.dtype)
            out.append(torch.einsum("yi,ncij,xj->ncyx", ay, p, ax))
        return out

    def forward(self, x: torch.Tensor, r: AxisTile, c: AxisTile) -> torch.Tensor:
        m = self.model.module
        with torch.inference_mode():
            return _unet_head(m, x, _unet_trunk(m, x), self.branches(r, c))


# -- LLFlow: histogram equalisation of the whole (padded) image, then tiles of the padded image --


def _mirror_index(n: int, before: int, after: int) -> torch.Tensor:
    """Source index of each position of a symmetric (``cba|abc``) extension, as ``pad_symmetric``."""
    pos = torch.arange(-before, n + after) % (2 * n)
    return torch.where(pos < n, pos, 2 * n - 1 - pos)


def equalize_lut(hist: torch.Tensor) -> torch.Tensor:
    """(P, 256) histograms -> (P, 256) uint8 lookup tables of OpenCV's ``equalizeHist`` (the
    algorithm of ``llflow.preprocess.equalize_hist``, from counts instead of pixels)."""
    hist = hist.long()
    n = hist.sum(dim=1, keepdim=True)
    i0 = (hist > 0).int().argmax(dim=1, keepdim=True)
    cum = hist.cumsum(dim=1)
    counted = (cum - cum.gather(1, i0)).clamp(min=0)
    rest = (n - hist.gather(1, i0)).to(torch.float32)
    scale = torch.where(rest > 0, torch.tensor(255.0) / rest.clamp(min=1), 0.0)
    lut = torch.round(counted.to(torch.float32) * scale).clamp(0, 255)
    return torch.where(rest > 0, lut, i0.to(torch.float32)).to(torch.uint8)


def padded_histogram(x: torch.Tensor, pad: Padding, *, rows_per_chunk: int = 256) -> torch.Tensor:
    """(3, 256) histograms of ``quantize_u8`` of the symmetric-padded image, without building it:
    each source pixel counts as often as the padding repeats its row times its column."""
    _, c, h, w = x.shape
    row_mult = torch.bincount(_mirror_index(h, pad.top, pad.bottom), minlength=h).double()
    col_mult = torch.bincount(_mirror_index(w, pad.left, pad.right), minlength=w).double()
    hist = torch.zeros(c, 256, dtype=torch.float64)
    for y0 in range(0, h, rows_per_chunk):
        q = quantize_u8(x[0, :, y0 : y0 + rows_per_chunk]).long()  # (C, rows, W)
        weight = (row_mult[y0 : y0 + rows_per_chunk, None] * col_mult[None, :]).reshape(-1)
        for ch in range(c):
            hist[ch] += torch.bincount(q[ch].reshape(-1), weights=weight, minlength=256)
    return hist.round().long()


@dataclass
class LLFlowTiles:
    """LLFlow's network input ``lq`` for any tile of its padded image, without building the padded image.

    The symmetric padding is an index, the log image is per pixel, and the histogram equalisation's
    lookup table comes from the whole padded image (it is global), so a tile's ``lq`` is exactly the
    matching window of the untiled ``lq``: only the networks' reach across tile edges differs.
    Shared by tiled enhancement, tiled sampling (``lle_cli.sampling``) and OOD features (``lle_cli.ood``).
    """

    x: torch.Tensor  # (1, 3, H, W) float32 in [0, 1] on the CPU
    pad: Padding
    rows: torch.Tensor  # source row of every padded row
    cols: torch.Tensor
    lut: torch.Tensor | None  # (3, 256) uint8, None without histogram equalisation

    @classmethod
    def of(cls, model: LoadedModel, x: torch.Tensor) -> LLFlowTiles:
        cfg = model.module.config
        h, w = x.shape[-2:]
        pad = auto_padding(h, w, cfg.pad_multiple)
        lut = equalize_lut(padded_histogram(x, pad)) if cfg.concat_histeq else None
        return cls(x, pad, _mirror_index(h, pad.top, pad.bottom), _mirror_index(w, pad.left, pad.right), lut)

    @property
    def padded_size(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    def input(self, r: AxisTile, c: AxisTile) -> torch.Tensor:
        """(1, 6 or 3, r.size, c.size) float32 on the CPU: the tile's window of the untiled ``lq``."""
        part = self.x[0].index_select(1, self.rows[r.start : r.stop]).index_select(2, self.cols[c.start : c.stop])[None]
        parts = [log_image(part)]
        if self.lut is not None:
            q = quantize_u8(part)[0].long()
            parts.append(torch.stack([self.lut[ch][q[ch]] for ch in range(q.shape[0])])[None].to(torch.float32) / 255.0)
        return torch.cat(parts, dim=1)


def _llflow_tiled(
    model: LoadedModel, x: torch.Tensor, plan: TilePlan, out: np.ndarray, progress: Callable[[int, int], None] | None
) -> np.ndarray:
    """LLFlow on tiles of the padded image (see ``LLFlowTiles``)."""
    m = model.module
    tiles = LLFlowTiles.of(model, x)

    def fn(r: AxisTile, c: AxisTile) -> np.ndarray:
        lq = tiles.input(r, c).to(model.device, model.dtype)
        with torch.inference_mode():
            features = m.condition(lq)
            y, _ = m.decode(features, m.latent_mean(features))
        return model._checked(y)[0].permute(1, 2, 0).numpy()

    return run_tiled(plan, fn, out, offset=(tiles.pad.top, tiles.pad.left), progress=progress)
