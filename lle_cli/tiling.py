"""Tiled inference: cover an image with overlapping tiles, run each, blend into one output.

Pure functions, independent of any model. A tile's outer ``margin`` pixels on every side that faces
another tile are wrong (the network padded there instead of seeing the neighbour), so they get
weight 0; across the rest of the overlap the weight ramps with a raised cosine. The weights of all
tiles are normalised per axis so they sum to exactly 1 at every pixel; because the tile grid is a
product of a row plan and a column plan, the 2-D weight ``w_row * w_col`` sums to 1 as well.

Peak memory of ``run_tiled`` is the preallocated output plus one tile's work.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["AxisTile", "TilePlan", "plan_axis", "plan_tiles", "plan_within_area", "run_tiled", "tile_overlap",
           "pad_amounts", "reflect_fits"]


def pad_amounts(size: int, multiple: int, minimum: int) -> tuple[int, int]:
    """(before, after): what a family's input axis of ``size`` is padded by to reach at least ``minimum``
    and a multiple of ``multiple``, split floor/ceil. The runner pads so in PyTorch, the ONNX
    runtimes (``lle_cli.engines``) in numpy from the export's sidecar."""
    target = -(-max(size, minimum) // multiple) * multiple
    extra = target - size
    return extra // 2, extra - extra // 2


def reflect_fits(height: int, width: int, *pads: int) -> bool:
    """Whether mirror padding (without the edge repeated) can pad by ``pads``: it needs more pixels than
    it adds; tiny images are padded by edge replication instead."""
    return min(height, width) > max(pads)


@dataclass(frozen=True)
class AxisTile:
    """One tile's extent along an axis and its blending weight at every position of it."""

    start: int
    size: int
    weights: np.ndarray  # (size,) float32, already normalised across the plan

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class TilePlan:
    """Tiles as the product of a row plan and a column plan."""

    height: int
    width: int
    rows: tuple[AxisTile, ...]
    cols: tuple[AxisTile, ...]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def __iter__(self) -> Iterator[tuple[AxisTile, AxisTile]]:
        for r in self.rows:
            for c in self.cols:
                yield r, c

    @property
    def tiled(self) -> bool:
        return len(self) > 1

    @property
    def work(self) -> float:
        """Pixels run through the network over the image's pixels (1.0 untiled; overlaps add to it)."""
        return len(self) * self.rows[0].size * self.cols[0].size / (self.height * self.width)

    def describe(self) -> str:
        """E.g. ``3 tiles (1x3) of 816x1552 px``: the grid, then each tile's width x height."""
        return f"{len(self)} tiles ({len(self.rows)}x{len(self.cols)}) of {self.cols[0].size}x{self.rows[0].size} px"


def tile_overlap(margin: int, multiple: int = 1, exact: bool = False) -> int:
    """Overlap for a receptive-field ``margin``: both tiles' bad borders plus a blending ramp, rounded
    up to ``multiple``. The ramp is as wide as one margin (at least 8 px) where neighbouring tiles
    disagree (a network whose reach exceeds the margin, LLFlow); ``exact`` tiles agree beyond their
    margins up to float rounding, so 2 px of ramp do and the overlap's extra work is saved."""
    overlap = 2 * margin + (2 if exact else max(margin, 8))
    return -(-overlap // multiple) * multiple


def _ramp(d: np.ndarray, margin: int, length: int) -> np.ndarray:
    """0 within ``margin`` of an inner edge, then a raised cosine rising to 1 over ``length`` px."""
    t = np.clip((d - margin + 1) / (length + 1), 0.0, 1.0)
    w = 0.5 - 0.5 * np.cos(np.pi * t)
    return np.where(d < margin, 0.0, w)


def plan_axis(n: int, tile: int, overlap: int, margin: int, multiple: int = 1) -> tuple[AxisTile, ...]:
    """Tiles of ``tile`` px covering ``[0, n)`` with at least ``overlap`` px between neighbours.

    Starts are multiples of ``multiple`` (so strided networks see the same pixel grid as untiled;
    ``n`` and ``tile`` must then be multiples too). Raises ``ValueError`` for a plan that cannot
    give every pixel a tile whose uncorrupted part covers it.
    """
    if n < 1 or tile < 1 or multiple < 1:
        raise ValueError(f"bad tiling request: size {n}, tile {tile}, multiple {multiple}")
    if tile >= n:
        return (AxisTile(0, n, np.ones(n, dtype=np.float32)),)
    if n % multiple or tile % multiple:
        raise ValueError(f"size {n} and tile {tile} must be multiples of {multiple}")
    if overlap < 2 * margin or tile - overlap < multiple:
        raise ValueError(f"tile {tile} with overlap {overlap} cannot hide a {margin} px margin on both sides")
    count = math.ceil((n - overlap) / (tile - overlap))
    # The same number of tiles, each only as long as the overlaps need: rounding the count up
    # otherwise leaves the neighbours overlapping far more than required, which is work thrown away.
    tile = min(tile, _tile_for_count(n, count, overlap, multiple))
    while True:
        span = n - tile
        starts = [min(span, (round(i * span / (count - 1)) // multiple) * multiple) for i in range(count)]
        starts[-1] = span
        # rounding starts down to the multiple can shrink an overlap below what the margins need
        if all(starts[i] + tile - starts[i + 1] >= overlap for i in range(count - 1)):
            break
        count += 1
    ramp_len = max(overlap - 2 * margin, 1)
    pos = np.arange(tile, dtype=np.float64)
    raw = []
    for i, s in enumerate(starts):
        w = np.ones(tile, dtype=np.float64)
        if i > 0:
            w *= _ramp(pos, margin, ramp_len)
        if i < count - 1:
            w *= _ramp(tile - 1 - pos, margin, ramp_len)
        raw.append(w)
    total = np.zeros(n, dtype=np.float64)
    for s, w in zip(starts, raw):
        total[s : s + tile] += w
    if not (total > 0).all():  # cannot happen with overlap >= 2 * margin; a guard for future edits
        raise ValueError(f"tile plan leaves pixels without an uncorrupted tile (size {n}, tile {tile})")
    return tuple(AxisTile(s, tile, (w / total[s : s + tile]).astype(np.float32)) for s, w in zip(starts, raw))


def plan_tiles(height: int, width: int, tile: int, overlap: int, margin: int, multiple: int = 1) -> TilePlan:
    """The 2-D plan: square tiles of ``tile`` px (smaller where the image is), see ``plan_axis``."""
    rows = plan_axis(height, tile, overlap, margin, multiple)
    cols = plan_axis(width, tile, overlap, margin, multiple)
    return TilePlan(height, width, rows, cols)


def _tile_for_count(n: int, count: int, overlap: int, multiple: int) -> int:
    """The shortest tile (a multiple of ``multiple``) with which ``count`` tiles can cover ``n``."""
    if count == 1:
        return n
    need = -(-(n + (count - 1) * overlap) // count)  # ceil: the tiles' total length covers n
    return -(-need // multiple) * multiple


def plan_within_area(
    height: int, width: int, max_area: int, overlap: int, margin: int, multiple: int = 1, min_side: int = 1
) -> TilePlan:
    """The plan with the least total tile area (the work) whose tiles hold at most ``max_area`` pixels.

    Tiles may be rectangular: a 2048x1536 image under a budget of ~1.3 M pixels runs as three
    full-height tiles (1.2x its pixels) where square tiles would need four (1.3x). Every side is at
    least ``min_side`` (or the image's), so neighbours never overlap by more than half a tile; when even
    such tiles exceed ``max_area`` they are used anyway, the smallest plan there is.
    """
    min_side = max(min_side, overlap + multiple)  # plan_axis needs a stride of at least one multiple

    def axis(n: int, tile: int) -> tuple[AxisTile, ...]:
        return plan_axis(n, max(tile, min(min_side, n)), overlap, margin, multiple)

    best: tuple[tuple[float, int], TilePlan] | None = None
    heights_tried: set[int] = set()
    count = 0
    while True:  # every row count, from one row down to the shortest tiles allowed
        count += 1
        want = _tile_for_count(height, count, overlap, multiple)
        rows = axis(height, want)
        th = rows[0].size
        if th not in heights_tried:
            heights_tried.add(th)
            cols = axis(width, max_area // th // multiple * multiple)
            if th * cols[0].size <= max_area:
                plan = TilePlan(height, width, rows, cols)
                key = (plan.work, len(plan))
                if best is None or key < best[0]:
                    best = (key, plan)
        if want <= min(min_side, height):
            break
    if best is None:  # not even the smallest allowed tiles fit: use those
        return TilePlan(height, width, axis(height, min_side), axis(width, min_side))
    return best[1]


TileFn = Callable[[AxisTile, AxisTile], np.ndarray]


def run_tiled(
    plan: TilePlan,
    fn: TileFn,
    out: np.ndarray,
    *,
    offset: tuple[int, int] = (0, 0),
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Blend ``fn(row_tile, col_tile)`` (an (h, w, C) array for that tile) into ``out`` (H, W, C).

    ``out`` must start at zero. ``offset`` is where ``out``'s pixel (0, 0) lies in the plan's
    coordinates (a plan over a padded image writes only the unpadded part); tile pixels outside
    ``out`` are dropped. ``progress(done, total)`` is called after every tile.
    """
    oy, ox = offset
    oh, ow = out.shape[:2]
    total = len(plan)
    for k, (r, c) in enumerate(plan):
        y = fn(r, c)
        # the part of this tile that lands inside ``out``
        y0, y1 = max(r.start, oy), min(r.stop, oy + oh)
        x0, x1 = max(c.start, ox), min(c.stop, ox + ow)
        if y0 < y1 and x0 < x1:
            ty, tx = slice(y0 - r.start, y1 - r.start), slice(x0 - c.start, x1 - c.start)
            w = r.weights[ty, None, None] * c.weights[None, tx, None]
            out[y0 - oy : y1 - oy, x0 - ox : x1 - ox] += y[ty, tx] * w
        if progress is not None:
            progress(k + 1, total)
    return out
