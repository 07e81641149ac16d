"""Illumination UNet of CLIP-LIT (ICCV'23), reused by RAVE (ECCV'24) and CLIP-LIT-Latent.

The network predicts a one-channel illumination map ``L`` and the enhanced image is the Retinex-style
division ``clamp(x / L, 0, 1)``. Parameter names match the upstream ``UNet_emb_oneBranch_symmetry``
so the authors' checkpoints load after stripping ``module.``.

Padding follows the official code exactly (see shared/golden/NOTES.md): the four outer convolutions
use ``outer_padding`` (reflect in CLIP-LIT and in RAVE's inference), residual-block convolutions are
always reflect-padded, and the pyramid-pooling fuse convolution is zero-padded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .family import FamilySpec, TileForward, register_family

if TYPE_CHECKING:
    from ..tiling import AxisTile, TilePlan

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

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The layers before the pyramid pooling, whose output the pooling averages."""
        act = F.leaky_relu if torch.is_grad_enabled() else F.leaky_relu_
        return self.ResidualBlock2(self.ResidualBlock1(act(self.cond1(x), 0.2)))

    def _after_pooling(self, fused: torch.Tensor) -> torch.Tensor:
        """The pyramid pooling's fused output -> the illumination map ``L``."""
        h = self.condx(fused)
        h = self.condy(self.ResidualBlock4(self.ResidualBlock3(h)))
        h = self.ResidualBlock6(self.ResidualBlock5(h))
        return torch.relu(self.cond_add1(h))

    def illumination(self, x: torch.Tensor) -> torch.Tensor:
        return self._after_pooling(self.PPM1(self.trunk(x)))

    def forward_with_context(self, x: torch.Tensor, branches: list[torch.Tensor], trunk: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` with the pyramid pooling's upsampled branches given (a tile of a larger image),
        and ``trunk(x)`` too where the caller has it already."""
        h = self.trunk(x) if trunk is None else trunk
        return divide_by_illumination(x, self._after_pooling(self.PPM1.fuse(torch.cat([h, *branches], 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return divide_by_illumination(x, self.illumination(x))


# -- tiles: the pyramid-pooled context of the whole image, fed to every tile ------------------------


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


def pooled_context_pass(
    model: IlluminationUNet,
    x: torch.Tensor,
    plan: TilePlan,
    to_device: Callable[[torch.Tensor], torch.Tensor],
    keep_bytes: int = 0,
) -> TileForward:
    """The tiled forward (``FamilySpec.tile_pass``): the pyramid pooling's branches for the whole image
    first, then each tile with them.

    Pass 1 runs only the trunk on every tile and adds each tile's blend-weighted trunk features into
    the bins' sums; because the blend weights sum to 1 and vanish where a tile is wrong, the sums are
    the whole image's, so the pooled values equal ``AdaptiveAvgPool2d`` on the untiled trunk output.
    Pass 2 runs each tile with the branches bilinearly upsampled over the whole image's grid.

    The trunk is about a seventh of the network's work; pass 2 reuses pass 1's trunk features for as
    many tiles as ``keep_bytes`` holds (all of them where the planner set that aside, see
    ``context_bytes``), so tiling then adds only the overlaps. Pass 1 goes through the plan
    backwards and pass 2 forwards, so the kept tiles are the ones pass 2 needs first and each is
    freed as it is used; the last tile of pass 1 is always kept (its features are in memory anyway).
    """
    bins = model.config.pool_bins
    rows = [_bin_matrix(plan.height, b) for b in bins]
    cols = [_bin_matrix(plan.width, b) for b in bins]
    sums = [np.zeros((model.config.width, b, b), dtype=np.float64) for b in bins]
    splits = np.cumsum([0, *bins])

    def crop(r: AxisTile, c: AxisTile) -> torch.Tensor:
        return to_device(x[..., r.start : r.stop, c.start : c.stop])

    kept: dict[tuple[int, int], torch.Tensor] = {}
    kept_bytes = 0
    with torch.inference_mode():
        for r, c in reversed(list(plan)):
            trunk = model.trunk(crop(r, c))
            size = trunk.numel() * trunk.element_size()
            while kept and kept_bytes + size > keep_bytes:  # no room: drop the oldest (pass 2's last)
                oldest = kept.pop(next(iter(kept)))
                kept_bytes -= oldest.numel() * oldest.element_size()
            kept[r.start, c.start] = trunk
            kept_bytes += size
            feat = trunk[0].float().cpu()
            ch, th, tw = feat.shape
            # every bin's column sums in one matrix product (the tile's weighted column membership),
            # then each bin's rows: two small products instead of one three-way einsum per bin
            rx = np.concatenate([m[:, c.start : c.stop] for m in cols]) * c.weights
            by_col = (feat.reshape(ch * th, tw) @ torch.from_numpy(rx.T.astype(np.float32))).reshape(ch, th, -1)
            for k in range(len(bins)):
                ry = torch.from_numpy((rows[k][:, r.start : r.stop] * r.weights).astype(np.float32))
                sums[k] += torch.einsum("iy,cyj->cij", ry, by_col[..., splits[k] : splits[k + 1]]).double().numpy()
        pooled = []
        for k in range(len(bins)):
            counts = rows[k].sum(1)[:, None] * cols[k].sum(1)[None, :]
            mean = to_device(torch.from_numpy(sums[k] / counts)[None])
            pooled.append(model.PPM1.features[k][1:](mean))  # the branch after its pooling layer

    def forward(r: AxisTile, c: AxisTile) -> torch.Tensor:
        branches = []
        for p in pooled:
            b = p.shape[-1]
            ay = torch.from_numpy(_upsample_matrix(r.start, r.stop, plan.height, b)).to(p.device, p.dtype)
            ax = torch.from_numpy(_upsample_matrix(c.start, c.stop, plan.width, b)).to(p.device, p.dtype)
            branches.append(torch.einsum("yi,ncij,xj->ncyx", ay, p, ax))
        return model.forward_with_context(crop(r, c), branches, kept.pop((r.start, c.start), None))

    return forward


SPEC = register_family(
    FamilySpec(
        name="illumination_unet",
        config_cls=IlluminationUNetConfig,
        model_cls=IlluminationUNet,
        description="CLIP-LIT/RAVE illumination UNet: enhanced = clamp(x / L(x), 0, 1)",
        min_size=2,  # reflect padding of a 3x3 convolution needs at least 2 pixels
        auto_cpu_bf16=True,  # bench/precision.py: bf16 autocast faster, within 1 level on 99.9 %+ of pixels
        channels_last=True,
        signature_keys=frozenset({"cond1.weight", "cond_add1.weight", "PPM1.fuse.0.weight"}),
        # 17 stacked 3x3 convolutions (5 before the pyramid pooling, its fuse, 11 after); the pooled
        # context is global, so the tiled runner computes it once on the whole image
        tile_margin=17,
        tile_pass=pooled_context_pass,
        context_bytes=lambda c: 4.0 * c.width,  # the trunk's float32 features, kept from pass 1 for pass 2
        # measured at width 32 as whole-process peak RSS, a fresh process per run, glibc keeping freed
        # memory as `lle enhance` sets it: 1,280-2,060 B/px untiled at 1-2.1 MP (1,290 at 1 MP without
        # that setting: the spread is the allocator's), ~2,500 per tile pixel in a tiled 8 MP run
        # (the pooled-context pass and the blending on top; bench/tiling.py); the estimate covers
        # that with room, so 8 and 24 MP photos stay under the 2.5 GiB process target
        activation_bytes=lambda c: 84.0 * c.width,
    ),
)
