"""LLFlow in tiles: the network input of any tile of the padded image, without building that image.

Histogram equalisation is global and the padding symmetric, so the runner tiles LLFlow's padded frame
(``tile_frame``) and asks this module for each tile's exact window of the untiled input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..family import TileForward
from .config import LLFlowConfig
from .model import LLFlow
from .preprocess import Padding, auto_padding, log_image, quantize_u8, symmetric_index

if TYPE_CHECKING:
    from ...tiling import AxisTile, TilePlan

__all__ = ["LLFlowTiles", "equalize_lut", "padded_histogram", "tile_frame", "tiled_forward"]


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
    row_mult = torch.bincount(symmetric_index(h, pad.top, pad.bottom), minlength=h).double()
    col_mult = torch.bincount(symmetric_index(w, pad.left, pad.right), minlength=w).double()
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
    Shared by tiled enhancement (``tiled_forward``), tiled sampling (``lle_cli.sampling``) and OOD
    features (``lle_cli.ood``).
    """

    x: torch.Tensor  # (1, 3, H, W) float32 in [0, 1] on the CPU
    pad: Padding
    rows: torch.Tensor  # source row of every padded row
    cols: torch.Tensor
    lut: torch.Tensor | None  # (3, 256) uint8, None without histogram equalisation

    @classmethod
    def of(cls, model: LLFlow, x: torch.Tensor) -> LLFlowTiles:
        cfg = model.config
        h, w = x.shape[-2:]
        pad = auto_padding(h, w, cfg.pad_multiple)
        lut = equalize_lut(padded_histogram(x, pad)) if cfg.concat_histeq else None
        return cls(x, pad, symmetric_index(h, pad.top, pad.bottom), symmetric_index(w, pad.left, pad.right), lut)

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


def tile_frame(config: LLFlowConfig, height: int, width: int) -> tuple[int, int, int, int]:
    """``FamilySpec.tile_frame``: LLFlow's own symmetric padding (top, bottom, left, right)."""
    pad = auto_padding(height, width, config.pad_multiple)
    return pad.top, pad.bottom, pad.left, pad.right


def tiled_forward(
    model: LLFlow, x: torch.Tensor, plan: TilePlan, to_device: Callable[[torch.Tensor], torch.Tensor], keep_bytes: int = 0
) -> TileForward:
    """``FamilySpec.tile_pass``: each tile of the padded frame decodes its latent mean (tau 0); the
    whole-image context is the equalisation's lookup table, so nothing is kept between tiles."""
    tiles = LLFlowTiles.of(model, x)

    def forward(r: AxisTile, c: AxisTile) -> torch.Tensor:
        features = model.condition(to_device(tiles.input(r, c)))
        return model.decode(features, model.latent_mean(features))[0]

    return forward
