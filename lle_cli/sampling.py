"""Drawing diverse enhancements from a conditional flow (LLFlow and its robust variants).

LLFlow learns a distribution of normally exposed images given the dark one: z ~ N(squeeze(g(x_l)), 1)
decoded by the invertible network (paper Sec. 3.2). ``lle enhance`` decodes the mean; here each
sample decodes ``z = squeeze(g(x_l)) + tau * eps + offset`` with ``eps ~ N(0, I)``. ``tau`` scales the
variation (the upstream test script's ``heat`` argument is ignored by its own code; this follows
the paper), ``offset`` shifts the whole latent, which the paper's Fig. 6 shows changes brightness
monotonically (they sweep -0.4 .. 0.4).

Cost: the encoder runs once per image (per tile, see below), and each coupling's conditioning-only
work once per decode pass for all of its latents; a pass takes as many latents as the memory budget
allows (``sampling_plan``).

Large images: under ``lle enhance``'s memory budget and planner (``LoadedModel.plan_for``), an image
whose encoder and decode do not fit runs in overlapping tiles of the padded image on LLFlow's 16-px
grid. Each tile runs the encoder once and decodes every sample's window of the latent, and tile
outputs are blended with enhance's weights; like tiled enhancement the result differs slightly from
untiled near seams (the networks reach past a tile's margin). Samples (and the noise fields) that
would not fit in memory are kept in an unlinked temporary file in ``$TMPDIR`` (12 bytes per pixel
per sample and per seed) and read back a band of rows at a time for statistics, means and the
contact sheet; statistics are computed from the float32 values, exactly. With ``resample_bad`` a
tiled image runs its encoder tiles again for each round of redraws (untiled, the features are kept).

Reproducibility: sample ``j`` uses ``eps`` from ``torch.Generator().manual_seed(seed + j)`` (CPU,
float32), the same ``eps`` for every (tau, offset) pair, so a sweep varies only tau/offset. Redraws
of bad samples take seeds ``seed + n``, ``seed + n + 1``, ... in order. ``eps`` is drawn once for the
whole padded image whatever the tiling, and each tile decodes its window of it, so a seed gives the
same picture tiled or not (up to the seams).

Exploding inverses (Hong et al., ICCV 2023): an affine flow's inverse can blow up far from the
training data. Every sample is checked; non-finite samples are never written, and samples with more
than ``max_out_of_range`` of their values outside [-0.5, 1.5] are flagged (``resample_bad`` redraws
both kinds).
"""

from __future__ import annotations

import math
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import formats
from .errors import LLEError, OutputExistsError, UsageError
from .imageio import encode_image, read_image, write_bytes_atomic
from .naming import input_stem, mean_name, sample_folder, sample_name, sheet_name
from .registry import ModelEntry
from .runner import LoadedModel
from .tiling import TilePlan

__all__ = [
    "OUT_OF_RANGE",
    "SampleStats",
    "Sample",
    "SampleSet",
    "sample_specs",
    "sample_stats",
    "sample_array",
    "SamplingPlan",
    "sampling_plan",
    "ensure_flow_model",
    "can_sample",
    "contact_sheet",
    "SampleOptions",
    "SampleJobResult",
    "check_options",
    "output_names",
    "normalise_format",
    "run_sample_job",
]

OUT_OF_RANGE = (-0.5, 1.5)  # values outside this are no longer "a slightly over/under-exposed pixel"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MAX_SEED = 2**62  # seeds run up from the base: seed + j, then redraws
ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class SampleStats:
    """What the JSON reports per sample; fractions are over all H * W * 3 values."""

    mean_brightness: float | None  # mean Rec. 601 luma of the written (clamped) image; None if no finite pixel
    nonfinite_fraction: float
    out_of_range_fraction: float  # finite values outside OUT_OF_RANGE
    min: float | None
    max: float | None


class _StatsAccumulator:
    """``SampleStats`` of an image given in row chunks: counts are exact, sums are float64."""

    def __init__(self) -> None:
        self.total = self.bad = self.outside = self.lit_pixels = 0
        self.luma = 0.0
        self.lo: float | None = None
        self.hi: float | None = None

    def add(self, img: np.ndarray) -> None:
        finite = np.isfinite(img)
        self.total += img.size
        self.bad += int(img.size - np.count_nonzero(finite))
        vals = img[finite]
        lo, hi = OUT_OF_RANGE
        self.outside += int(np.count_nonzero((vals < lo) | (vals > hi)))
        if vals.size:
            vmin, vmax = float(vals.min()), float(vals.max())
            self.lo = vmin if self.lo is None else min(self.lo, vmin)
            self.hi = vmax if self.hi is None else max(self.hi, vmax)
        pix_ok = finite.all(axis=2)
        if pix_ok.any():
            luma = np.clip(img[pix_ok], 0.0, 1.0) @ _LUMA
            self.luma += float(luma.sum(dtype=np.float64))
            self.lit_pixels += luma.size

    def result(self) -> SampleStats:
        total = max(self.total, 1)
        return SampleStats(
            mean_brightness=self.luma / self.lit_pixels if self.lit_pixels else None,
            nonfinite_fraction=self.bad / total,
            out_of_range_fraction=self.outside / total,
            min=self.lo,
            max=self.hi,
        )


_CHUNK_BYTES = 16 << 20  # row chunks of ~16 MB: statistics, means and sheets never copy a whole 24 MP image


def _row_step(width: int, bytes_per_pixel: int = 12) -> int:
    return max(1, _CHUNK_BYTES // max(width * bytes_per_pixel, 1))


def sample_stats(img: np.ndarray) -> SampleStats:
    """Statistics of one unclamped (H, W, 3) sample."""
    acc = _StatsAccumulator()
    step = _row_step(img.shape[1])
    for y0 in range(0, max(img.shape[0], 1), step):
        acc.add(img[y0 : y0 + step])
    return acc.result()


# --------------------------------------------------------------------------------------------
# Where samples and noise live


class _Store:
    """``count`` zero-initialised float32 arrays of one ``shape``, in memory or in an unlinked temporary file.

    A large image's samples (12 bytes per pixel each) and noise (12 bytes per padded pixel per seed)
    do not fit the memory budget many times over: spilled, a tile's blend or a window's read touches
    only that window's pages, mapped for the one operation, and the kernel's page cache holds the rest
    (outside the process's RSS). The file (in ``$TMPDIR``) is gone when the store is closed or the
    process ends, however it ends.
    """

    def __init__(self, count: int, shape: tuple[int, ...], *, spill: bool) -> None:
        self.count, self.shape = count, tuple(int(v) for v in shape)
        self._item_bytes = int(np.prod(self.shape, dtype=np.int64)) * 4
        self._arrays: list[np.ndarray | None] = [None] * count
        self._file = None
        if spill:
            # closed by close() or, when the caller forgets, with the object; unlinked from the start
            self._file = tempfile.TemporaryFile(prefix="lle-sample-")  # noqa: SIM115
            self._file.truncate(self._item_bytes * count)  # sparse: reads as zeros until written

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def _map(self, i: int, mode: str) -> np.memmap:
        return np.memmap(self._file, dtype=np.float32, mode=mode, offset=i * self._item_bytes, shape=self.shape)

    def put(self, i: int, values: np.ndarray) -> None:
        """Item ``i`` becomes ``values`` (kept as given when in memory: the caller hands it over)."""
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(self.shape)
        if self._file is None:
            self._arrays[i] = values
        else:
            self._file.seek(i * self._item_bytes)
            values.tofile(self._file)

    def add(self, i: int, index: tuple[slice, ...], values: np.ndarray) -> None:
        """``item[i][index] += values``."""
        if self._file is None:
            if self._arrays[i] is None:
                self._arrays[i] = np.zeros(self.shape, dtype=np.float32)
            self._arrays[i][index] += values
        else:
            mm = self._map(i, "r+")
            mm[index] += values
            del mm  # unmapped: its pages leave this process's RSS

    def clear(self, i: int) -> None:
        if self._file is None:
            self._arrays[i] = None
        else:
            self._file.seek(i * self._item_bytes)
            left = self._item_bytes
            zeros = bytes(min(left, _CHUNK_BYTES))
            while left:
                left -= self._file.write(zeros[: min(left, len(zeros))])

    def read(self, i: int, index: tuple[slice, ...] = ()) -> np.ndarray:
        """A copy of ``item[i][index]`` when spilled; in memory, a view of the array itself."""
        if self._file is None:
            arr = self._arrays[i]
            return np.zeros(self.shape, np.float32)[index] if arr is None else arr[index]
        if not index:
            self._file.seek(i * self._item_bytes)
            return np.fromfile(self._file, dtype=np.float32, count=self._item_bytes // 4).reshape(self.shape)
        mm = self._map(i, "r")
        out = np.array(mm[index])
        del mm
        return out

    def close(self) -> None:
        self._arrays = [None] * self.count
        if self._file is not None:
            self._file.close()


# --------------------------------------------------------------------------------------------
# Sampling


@dataclass
class Sample:
    index: int  # j: which eps (seed + j) within its (tau, offset) group
    tau: float
    offset: float
    seed: int | None  # None when tau == 0: nothing random was drawn
    stats: SampleStats
    bad: bool
    rejected_seeds: list[int] = field(default_factory=list)  # redraws that were bad too, in order
    _store: _Store | None = field(default=None, repr=False, compare=False)
    _slot: int = field(default=0, repr=False, compare=False)

    @property
    def image(self) -> np.ndarray:
        """(H, W, 3) float32, unclamped, may hold NaN/Inf; read back from disk when the run spilled."""
        if self._store is None:
            raise LLEError("this sample's pixels were released (SampleSet.close)")
        return self._store.read(self._slot)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``image`` without reading the rest."""
        if self._store is None:
            raise LLEError("this sample's pixels were released (SampleSet.close)")
        return self._store.read(self._slot, (slice(start, stop),))

    @property
    def finite(self) -> bool:
        return self.stats.nonfinite_fraction == 0.0

    @property
    def status(self) -> str:
        """``ok``, ``out_of_range`` (finite but flagged) or ``non_finite`` (never written)."""
        if not self.finite:
            return "non_finite"
        return "out_of_range" if self.bad else "ok"


@dataclass
class SampleSet:
    samples: list[Sample]
    seed: int  # base seed
    batch_size: int  # latents through the flow at once (per tile when tiled)
    decoded: int  # latents decoded in all, redraws included (a tiled latent counts once)
    tiles: int = 1  # tiles the image ran in (1: whole); each ran the encoder once per pass
    encoder_passes: int = 1  # tiles x passes: a tiled --resample-bad redraw runs the encoder tiles again
    spilled: bool = False  # samples were kept in a temporary file, not in memory
    _store: _Store | None = field(default=None, repr=False, compare=False)

    def groups(self) -> dict[tuple[float, float], list[Sample]]:
        out: dict[tuple[float, float], list[Sample]] = {}
        for s in self.samples:
            out.setdefault((s.tau, s.offset), []).append(s)
        return out

    def mean(self, tau: float, offset: float) -> np.ndarray | None:
        """Mean of the group's finite samples (paper Sec. 3.2: averaging samples improves quality).

        Summed in float32 in sample order, as ``np.mean(stack, axis=0)`` does, a band of rows at a
        time: the samples are never all in memory at once.
        """
        good = [s for s in self.groups().get((tau, offset), []) if s.finite]
        if not good:
            return None
        h, w = good[0]._store.shape[:2]
        out = np.empty((h, w, 3), dtype=np.float32)
        step = _row_step(w)
        for y0 in range(0, h, step):
            acc = np.array(good[0].rows(y0, y0 + step), dtype=np.float32)
            for s in good[1:]:
                acc += s.rows(y0, y0 + step)
            out[y0 : y0 + step] = acc / len(good)
        return out

    def close(self) -> None:
        """Release the samples' pixels (and their temporary file); the statistics stay."""
        if self._store is not None:
            self._store.close()
        for s in self.samples:
            s._store = None

    def __enter__(self) -> SampleSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sample_specs(n: int, taus: Sequence[float], offsets: Sequence[float]) -> list[tuple[int, float, float]]:
    """``(index, tau, offset)`` of every sample, in output order: n per (tau, offset), 1 when tau is 0."""
    return [(j, t, o) for t in taus for o in offsets for j in range(n if t != 0 else 1)]


def _check_values(n: int, taus: Sequence[float], offsets: Sequence[float], max_tries: int, max_out_of_range: float) -> None:
    if n < 1:
        raise UsageError(f"--n {n}: must be a whole number >= 1 (samples per tau/offset pair)")
    if not taus or not offsets:
        raise UsageError("give at least one --tau and one --z-offset")
    for t in taus:
        if not math.isfinite(t) or t < 0:
            raise UsageError(f"--tau {t:g}: must be a finite number >= 0 (the spread of the latent; 0 = its mean)")
    for o in offsets:
        if not math.isfinite(o):
            raise UsageError(f"--z-offset {o:g}: must be a finite number (the paper sweeps -0.4 to 0.4)")
    if max_tries < 1:
        raise UsageError(f"--max-tries {max_tries}: must be a whole number >= 1")
    if not 0.0 <= max_out_of_range <= 1.0:
        raise UsageError(f"--max-out-of-range {max_out_of_range:g}: must be a fraction between 0 and 1")


def can_sample(family: str) -> bool:
    """Whether models of this family are conditional flows that ``sample_array`` can draw from
    (``FamilySpec.samples``: the model has ``prepare``, ``condition``, ``latent_mean`` and ``decode``)."""
    from .models import FAMILIES

    spec = FAMILIES.get(family)
    return spec is not None and spec.samples


def ensure_flow_model(model: LoadedModel | ModelEntry) -> None:
    """``UsageError`` unless the model can draw samples (a conditional flow such as LLFlow)."""
    entry = model if isinstance(model, ModelEntry) else model.entry
    ok = can_sample(entry.family)
    if not ok:
        raise UsageError(
            f"model {entry.name} ({entry.family}) is not a flow and cannot draw samples; "
            "use an LLFlow model (e.g. --model llflow), or `lle enhance` for this one"
        )


# Latents per decode pass a tiled run plans for when its couplings share their conditioning-only
# work across the latents of a pass (the affine coupling): more share it, fewer allow larger tiles
# (less overlap work). Couplings that redo it per latent (the spline coupling) plan for one.
_TILED_CHUNK = 4
# Most latents in one pass: beyond these the sharing gains little (the spline coupling gains
# nothing: it redoes the feature work per latent) and per-latent memory is least well known.
_MAX_CHUNK = {True: 16, False: 4}
# Samples and noise stay in memory while they take at most this share of the activation budget;
# beyond it they go to a temporary file and the budget goes to the tiles.
_KEEP_SHARE = 0.25


@dataclass(frozen=True)
class SamplingPlan:
    """How ``sample_array`` runs an image: whole or in tiles, latents per pass, where samples live."""

    tiles: TilePlan | None  # None: the whole (padded) image in one pass
    chunk: int  # latents decoded together (per tile)
    spill: bool  # samples and noise in a temporary file instead of memory
    per_pixel: float  # planned peak bytes per padded pixel of a pass

    def describe(self) -> str:
        where = "a temporary file" if self.spill else "memory"
        grid = "whole" if self.tiles is None else self.tiles.describe()
        return f"{grid}, {self.chunk} latent(s) per pass, samples in {where}"


def sampling_plan(model: LoadedModel, height: int, width: int, latents: int, seeds: int | None = None,
                  *, batch_size: int | None = None) -> SamplingPlan:
    """Tiles, latents per pass and sample storage for ``latents`` samples (``seeds`` noise fields) of an image.

    The budget is ``lle enhance``'s (``LoadedModel.activation_budget``), less the samples and noise
    when they are kept in memory. A pass costs the family's ``activation_bytes`` (encoder and one
    latent's decode) plus ``decode_bytes`` per further latent, per padded pixel. The image runs
    whole when one latent fits, with as many latents per pass as fit (at most ``_MAX_CHUNK``);
    otherwise in tiles planned for ``batch_size`` latents per pass, or ``_TILED_CHUNK`` when the
    couplings share work across latents, else one; each tile then takes as many as fit.
    ``model.tile`` (``--tile``) forces tiling or none, as in enhance.
    """
    spec, cfg = model.spec, model.module.config
    hp, wp = model._tiled_size(height, width)
    seeds = latents if seeds is None else seeds
    # float32 samples at the image size, and noise at the latent size: 192 channels at 1/64 of the padded pixels
    kept = 12 * height * width * latents + 12 * hp * wp * seeds
    budget = model.activation_budget(height, width)
    spill = kept > _KEEP_SHARE * budget
    reserved = 0 if spill else kept
    first = spec.activation_bytes(cfg)
    more = spec.decode_bytes(cfg)
    shares = _shares_conditioning(model.module)
    if batch_size is not None:
        plan = model.plan_for(height, width, first + (batch_size - 1) * more, reserved_bytes=reserved)
    else:
        plan = model.plan_for(height, width, first, reserved_bytes=reserved)  # None: one latent fits whole
        if plan is not None and latents > 1 and shares:
            want = min(latents, _TILED_CHUNK)
            plan = model.plan_for(height, width, first + (want - 1) * more, reserved_bytes=reserved)
    area = hp * wp if plan is None else plan.rows[0].size * plan.cols[0].size
    if batch_size is not None:
        chunk = batch_size
    else:
        room = max(budget - reserved, 0) / area
        chunk = int(min(latents, _MAX_CHUNK[shares], max(1, 1 + (room - first) // max(more, 1.0))))
    return SamplingPlan(plan, chunk, spill, first + (chunk - 1) * more)


def _shares_conditioning(module: torch.nn.Module) -> bool:
    """Whether the flow's couplings compute their feature-only terms once for a batch of latents
    (a ``conditioning`` method, as the affine coupling has)."""
    return any(callable(getattr(getattr(m, "affine", None), "conditioning", None)) for m in module.modules())


def _eps(seed: int, shape: torch.Size) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


Job = tuple[float, float, "int | None"]  # tau, offset, seed (None: tau 0, nothing drawn)


def sample_array(
    model: LoadedModel,
    rgb: np.ndarray,
    *,
    n: int = 1,
    taus: Sequence[float] = (1.0,),
    offsets: Sequence[float] = (0.0,),
    seed: int | None = None,
    batch_size: int | None = None,
    resample_bad: bool = False,
    max_tries: int = 5,
    max_out_of_range: float = 0.01,
    progress: ProgressFn | None = None,
) -> SampleSet:
    """Draw samples for one (H, W, 3) float image in [0, 1]; see the module docstring for the rules.

    ``max_tries`` counts draws per sample (the first included) when ``resample_bad`` is on. An image
    too large for the memory budget (or any image with ``model.tile`` set) runs in tiles; the result's
    pixels may then live in a temporary file until ``SampleSet.close()`` (or garbage collection).
    """
    taus, offsets = [float(t) for t in taus], [float(o) for o in offsets]
    _check_values(n, taus, offsets, max_tries, max_out_of_range)
    ensure_flow_model(model)
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    if seed is None:
        seed = secrets.randbits(31)
    if not 0 <= seed < _MAX_SEED:
        raise UsageError(f"--seed {seed}: use a number between 0 and 2**62")
    h, w = rgb.shape[:2]
    specs = sample_specs(n, taus, offsets)
    jobs: list[Job] = [(t, o, seed + j if t != 0 else None) for j, t, o in specs]
    layout = sampling_plan(model, h, w, len(specs), len({s for _, _, s in jobs if s is not None}), batch_size=batch_size)
    x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    store = _Store(len(specs), (h, w, 3), spill=layout.spill)
    runner = _Tiled(model, x, layout, store) if layout.tiles is not None else _Whole(model, x, layout, store)
    total_work = len(specs)
    decoded = 0

    def run(slots: list[int], job_list: list[Job]) -> None:
        nonlocal decoded
        base = decoded

        def report(done: float) -> None:
            if progress:
                progress(base + done, total_work)

        runner.run(slots, job_list, report)
        decoded += len(slots)

    def judge(slot: int) -> tuple[SampleStats, bool]:
        acc = _StatsAccumulator()
        step = _row_step(w)
        for y0 in range(0, h, step):
            acc.add(store.read(slot, (slice(y0, y0 + step),)))
        st = acc.result()
        return st, st.nonfinite_fraction > 0 or st.out_of_range_fraction > max_out_of_range

    try:
        run(list(range(len(specs))), jobs)
        samples = []
        for slot, ((j, t, o), (_, _, s)) in enumerate(zip(specs, jobs)):
            st, bad = judge(slot)
            samples.append(Sample(j, t, o, s, st, bad, _store=store, _slot=slot))
        if resample_bad:
            next_seed = seed + n
            for _ in range(max_tries - 1):
                todo = [s for s in samples if s.bad and s.tau != 0]  # tau 0 is deterministic: a redraw is the same
                if not todo:
                    break
                new_seeds = list(range(next_seed, next_seed + len(todo)))
                next_seed += len(todo)
                total_work += len(todo)
                run([smp._slot for smp in todo], [(smp.tau, smp.offset, ns) for smp, ns in zip(todo, new_seeds)])
                for smp, new in zip(todo, new_seeds):
                    smp.rejected_seeds.append(smp.seed)
                    smp.seed = new
                    smp.stats, smp.bad = judge(smp._slot)
    except BaseException:
        store.close()
        raise
    finally:
        runner.close()
    tiles = 1 if layout.tiles is None else len(layout.tiles)
    return SampleSet(samples, seed, layout.chunk, decoded, tiles=tiles, encoder_passes=runner.encoder_passes,
                     spilled=store.spilled, _store=store)


class _Noise:
    """Each seed's eps for the whole padded image, drawn once (``_eps``) and kept in memory or spilled;
    tiles read their latent window of it, so a seed gives the same noise however the image is tiled."""

    def __init__(self, seeds: list[int], shape: tuple[int, ...], spill: bool) -> None:
        self.shape = shape
        self.slot = {s: i for i, s in enumerate(dict.fromkeys(seeds))}
        self.store = _Store(len(self.slot), shape, spill=spill)
        self.drawn: set[int] = set()

    def window(self, seed: int, index: tuple[slice, ...] = ()) -> torch.Tensor:
        i = self.slot[seed]
        if seed not in self.drawn:
            self.store.put(i, _eps(seed, torch.Size(self.shape)).numpy())
            self.drawn.add(seed)
        return torch.from_numpy(np.ascontiguousarray(self.store.read(i, index)))

    def close(self) -> None:
        self.store.close()


class _Pass:
    """Decodes jobs against one set of encoder features into ``store`` (shared by whole and tiled runs)."""

    encoder_passes = 0

    def __init__(self, model: LoadedModel, x: torch.Tensor, layout: SamplingPlan, store: _Store) -> None:
        self.model, self.x, self.layout, self.store = model, x, layout, store

    def decode(
        self, features: object, mu: torch.Tensor, slots: list[int], jobs: list[Job], noise: _Noise,
        window: tuple[slice, ...], emit: Callable[[int, torch.Tensor], None], report: Callable[[float], None],
    ) -> None:
        """``emit(slot, image)`` for every job: (3, h, w) float32 CPU images at the features' size."""
        module, chunk = self.model.module, self.layout.chunk
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]

            def layer_done(done: int, layers: int, base: int = start, k: int = len(part)) -> None:
                report(base + k * done / layers)

            with torch.inference_mode():
                z = torch.cat([
                    mu + (tau * noise.window(s, window).to(mu.device, mu.dtype) if s is not None else 0.0) + off
                    for tau, off, s in part
                ])
                imgs, _ = module.decode(features, z, chunk=chunk, progress=layer_done)
                del z
                imgs = imgs.float().cpu()
            for k, slot in enumerate(slots[start : start + chunk]):
                emit(slot, imgs[k])
            del imgs

    def close(self) -> None:
        pass


class _Whole(_Pass):
    """One encoder pass over the whole image, kept for redraws (they cost decodes only)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.features = self.mu = self.pad = None

    def run(self, slots: list[int], jobs: list[Job], report: Callable[[float], None]) -> None:
        module = self.model.module
        if self.features is None:
            with torch.inference_mode():
                lq, self.pad = module.prepare(self.x.to(self.model.device, self.model.input_dtype))
                self.features = module.condition(lq)  # once per image, however many samples
                self.mu = module.latent_mean(self.features)
                del lq
            self.encoder_passes += 1
        noise = _Noise([s for _, _, s in jobs if s is not None], tuple(self.mu.shape), self.layout.spill)

        def emit(slot: int, img: torch.Tensor) -> None:
            self.store.put(slot, self.pad.crop(img).permute(1, 2, 0).numpy())

        try:
            self.decode(self.features, self.mu, slots, jobs, noise, (), emit, report)
        finally:
            noise.close()

    def close(self) -> None:
        self.features = self.mu = None


class _Tiled(_Pass):
    """Every pass runs the encoder per tile and decodes all of that tile's latents against it; tile
    outputs are blended into the store with ``lle enhance``'s weights."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        from .models.llflow import LLFlowTiles

        self.tiles = LLFlowTiles.of(self.model.module, self.x)

    def run(self, slots: list[int], jobs: list[Job], report: Callable[[float], None]) -> None:
        module, plan = self.model.module, self.layout.tiles
        scale = module.config.downscale
        hp, wp = self.tiles.padded_size
        noise = _Noise([s for _, _, s in jobs if s is not None],
                       (1, module.config.latent_channels, hp // scale, wp // scale), self.layout.spill)
        top, left = self.tiles.pad.top, self.tiles.pad.left
        oh, ow = self.store.shape[:2]
        for slot in slots:
            self.store.clear(slot)
        try:
            for t, (r, c) in enumerate(plan):
                # the part of this tile inside the (unpadded) image, and its blending weights there
                y0, y1 = max(r.start, top), min(r.stop, top + oh)
                x0, x1 = max(c.start, left), min(c.stop, left + ow)
                if y0 >= y1 or x0 >= x1:
                    continue
                lq = self.tiles.input(r, c).to(self.model.device, self.model.input_dtype)
                with torch.inference_mode():
                    features = module.condition(lq)
                    mu = module.latent_mean(features)
                del lq
                self.encoder_passes += 1
                ty, tx = slice(y0 - r.start, y1 - r.start), slice(x0 - c.start, x1 - c.start)
                weight = r.weights[ty, None, None] * c.weights[None, tx, None]
                dead = weight[..., 0] == 0  # a tile's margin: its NaN/Inf there must not leak (NaN * 0 = NaN)
                target = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
                window = (slice(None), slice(None), slice(r.start // scale, r.stop // scale), slice(c.start // scale, c.stop // scale))

                def emit(slot: int, img: torch.Tensor, ty=ty, tx=tx, weight=weight, dead=dead, target=target) -> None:
                    part = img.permute(1, 2, 0).numpy()[ty, tx] * weight
                    part[dead] = 0.0
                    self.store.add(slot, target, part)

                def tile_report(done: float, t: int = t) -> None:
                    report((t * len(jobs) + done) / len(plan))

                self.decode(features, mu, slots, jobs, noise, window, emit, tile_report)
                del features, mu
        finally:
            noise.close()


# --------------------------------------------------------------------------------------------
# Contact sheet


_MAGENTA = np.array([255, 0, 255], dtype=np.uint8)


def _sheet_u8(img: np.ndarray) -> np.ndarray:
    """8-bit thumbnail source of an unclamped sample, non-finite pixels magenta; converted a band of
    rows at a time (``img`` may be a ``_SampleRows``), so the float temporaries stay small."""
    h, w = img.shape[:2]
    u8 = np.empty((h, w, 3), dtype=np.uint8)
    step = _row_step(w)
    for y0 in range(0, h, step):
        part = np.asarray(img[y0 : y0 + step])
        finite = np.isfinite(part).all(axis=2)
        q = np.rint(np.clip(np.nan_to_num(part, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0) * 255).astype(np.uint8)
        q[~finite] = _MAGENTA
        u8[y0 : y0 + step] = q
    return u8


class _SampleRows:
    """A sample as ``contact_sheet`` reads it: a shape and row slices, read from the store on demand."""

    def __init__(self, sample: Sample) -> None:
        self.sample = sample
        self.shape = sample._store.shape if sample._store is not None else (0, 0, 3)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        return self.sample.rows(start, stop)


def contact_sheet(
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    rows: Sequence[Sequence[int]] | None = None,
    columns: int = 5,
    cell: int = 256,
    flagged: Sequence[bool] = (),
) -> np.ndarray:
    """Lay samples out in a grid with a caption under each; returns (H, W, 3) uint8.

    ``rows`` lists the image indices of each row (e.g. one row per (tau, offset)); by default the
    images fill rows of ``columns``. Thumbnails are ``cell`` pixels on their long side. Non-finite
    pixels are painted magenta, never black, and flagged captions are red.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if rows is None:
        rows = [list(range(i, min(i + columns, len(images)))) for i in range(0, len(images), columns)]
    h, w = images[0].shape[:2]
    scale = cell / max(h, w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.multiline_textbbox((0, 0), lbl, font=font, spacing=2) for lbl in labels]
    pitch_x = max(tw, *(b[2] + 4 for b in boxes))
    caption_h = max(b[3] for b in boxes) + 8
    pad = 6
    ncols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (pad + ncols * (pitch_x + pad), pad + len(rows) * (th + caption_h + pad)), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    flags = list(flagged) + [False] * (len(images) - len(flagged))
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST
    for r, row in enumerate(rows):
        for c, i in enumerate(row):
            x0, y0 = pad + c * (pitch_x + pad), pad + r * (th + caption_h + pad)
            sheet.paste(Image.fromarray(_sheet_u8(images[i])).resize((tw, th), resample), (x0, y0))
            colour = (255, 80, 80) if flags[i] else (230, 230, 230)
            draw.multiline_text((x0 + 2, y0 + th + 4), labels[i], fill=colour, font=font, spacing=2)
    return np.asarray(sheet)


# --------------------------------------------------------------------------------------------
# Files: one input image -> its samples, mean and contact sheet on disk


@dataclass(frozen=True)
class SampleOptions:
    n: int = 1
    taus: tuple[float, ...] = (1.0,)
    offsets: tuple[float, ...] = (0.0,)
    seed: int | None = None
    mean: bool = False
    sheet: bool = True
    resample_bad: bool = False
    max_tries: int = 5
    max_out_of_range: float = 0.01
    batch_size: int | None = None
    format: str | None = None  # None: the input's (PNG for stdin)
    quality: int = 95
    bit_depth: int | None = None
    overwrite: bool = False
    skip_existing: bool = False  # an input whose outputs all exist and read back as images is not drawn again


def check_options(opts: SampleOptions) -> None:
    """``UsageError`` naming the flag and its accepted range for any value a job would refuse.

    Cheap (no file, no model): callers run it before any heavy work so that a typo fails at once.
    """
    _check_values(opts.n, opts.taus, opts.offsets, opts.max_tries, opts.max_out_of_range)
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UsageError(f"--batch-size {opts.batch_size}: must be a whole number >= 1")
    if opts.seed is not None and not 0 <= opts.seed < _MAX_SEED:
        raise UsageError(f"--seed {opts.seed}: must be a whole number from 0 to 2**62 - 1")
    if not 1 <= opts.quality <= 100:
        raise UsageError(f"--quality {opts.quality}: must be a whole number from 1 to 100")
    if opts.bit_depth not in (None, 8, 16):
        raise UsageError(f"--bit-depth {opts.bit_depth}: must be 8 or 16")


@dataclass
class SampleJobResult:
    input: str
    model: str
    # "ok" (all samples written), "partial" (some not written), "skipped" (skip_existing found them all) or "error"
    status: str
    error: str | None = None
    seed: int | None = None
    batch_size: int | None = None
    tiles: int | None = None  # tiles the image was drawn in (1: whole)
    seconds: float = 0.0
    sheet: str | None = None
    samples: list[dict[str, object]] = field(default_factory=list)
    means: list[dict[str, object]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def normalise_format(fmt: str | None) -> str | None:
    """``jpg``/``tif``/... -> the canonical name (None stays None), or ``UsageError`` for a format
    ``lle sample`` does not write: only those that need no optional package (``BUILTIN_FORMATS``)."""
    return None if fmt is None else formats.normalise_format(fmt, formats.BUILTIN_FORMATS)


def _fmt_tau(t: float) -> str:
    return f"{t:g}"


def _fmt_off(o: float) -> str:
    return f"{o:+g}" if o != 0 else "0"


def output_names(stem: str, suffix: str, opts: SampleOptions) -> tuple[list[str], dict[tuple[float, float], str], str | None]:
    """File names (no directory) of every sample, in drawing order, of each group's mean (if asked),
    and of the sheet (if asked); ``lle_cli.naming`` spells each one and reads it back."""
    samples = [sample_name(stem, j, t, o, suffix, n=opts.n) for j, t, o in sample_specs(opts.n, opts.taus, opts.offsets)]
    means = {(t, o): mean_name(stem, t, o, suffix) for t in opts.taus for o in opts.offsets} if opts.mean else {}
    return samples, means, sheet_name(stem, opts.taus, opts.offsets) if opts.sheet else None


def _label(s: Sample) -> str:
    head = f"#{s.index} tau={_fmt_tau(s.tau)} off={_fmt_off(s.offset)}"
    tail = f"seed {s.seed}" if s.seed is not None else "mean latent"
    if s.status == "non_finite":
        tail += f"  NON-FINITE {s.stats.nonfinite_fraction:.1%}"
    elif s.status == "out_of_range":
        tail += f"  OUT OF RANGE {s.stats.out_of_range_fraction:.1%}"
    return f"{head}\n{tail}"


def _sheet_rows(samples: Sequence[Sample], width: int = 8) -> list[list[int]]:
    """One row per (tau, offset) when there are several (wrapped at ``width``); else rows of 5."""
    groups: dict[tuple[float, float], list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault((s.tau, s.offset), []).append(i)
    if len(groups) == 1:
        width = 5
    return [idx[k : k + width] for idx in groups.values() for k in range(0, len(idx), width)]


def _encode_png(rgb_u8: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb_u8).save(buf, format="PNG")
    return buf.getvalue()


def _complete(path: Path) -> bool:
    """Whether ``path`` is a finished output: an image that decodes, not a truncated or foreign file."""
    if not path.is_file():
        return False
    try:
        read_image(path)
    except LLEError:
        return False
    return True


def run_sample_job(
    model: LoadedModel,
    input: str,
    out_dir: str | Path | None,
    opts: SampleOptions,
    *,
    stdin: bytes | None = None,
    progress: ProgressFn | None = None,
) -> SampleJobResult:
    """Read one image, draw its samples and write them (plus mean and sheet); errors become the result.

    Every output path is checked before any work: existing files are never replaced without
    ``overwrite``. Non-finite samples are not written (their entry has ``output: None``). With
    ``skip_existing``, an input whose outputs all exist and read back as images is not drawn again
    (status ``skipped``). An interrupt (``KeyboardInterrupt``) removes the files this job wrote,
    then propagates: an input is on disk whole or not at all.
    """
    start = time.perf_counter()
    res = SampleJobResult(input=input, model=model.name, status="error")
    written: list[Path] = []
    drawn: SampleSet | None = None
    try:
        check_options(opts)
        pic = read_image(stdin if stdin is not None else b"", name="<stdin>") if input == "-" else read_image(input)
        fmt = normalise_format(opts.format) or (
            pic.format if input != "-" and pic.format in formats.BUILTIN_FORMATS else "PNG"
        )
        folder = sample_folder(input, out_dir)
        names, mean_names, sheet = output_names(input_stem(input), formats.default_suffix(fmt), opts)
        planned = [folder / p for p in [*names, *mean_names.values(), *([sheet] if sheet else [])]]
        if opts.skip_existing and input != "-":  # piped bytes may be another image under the same name
            incomplete = next((p for p in planned if not _complete(p)), None)
            if incomplete is None:
                res.status = "skipped"
                res.seconds = round(time.perf_counter() - start, 4)
                return res
            present = sum(os.path.lexists(p) for p in planned)
            if present and not opts.overwrite:
                # a mix of old and new files would look like one run's output and be neither
                raise OutputExistsError(
                    f"{input}: {present} of its {len(planned)} outputs exist but {incomplete} is missing or unreadable "
                    "(a run that stopped part way, or a non-finite sample); pass --overwrite to draw this input again"
                )
        if not opts.overwrite:
            clash = next((p for p in planned if os.path.lexists(p)), None)
            if clash is not None:
                raise OutputExistsError(f"{clash}: already exists; pass --overwrite to replace it or choose another -o")
        folder.mkdir(parents=True, exist_ok=True)
        drawn = sample_array(
            model, pic.rgb, n=opts.n, taus=opts.taus, offsets=opts.offsets, seed=opts.seed,
            batch_size=opts.batch_size, resample_bad=opts.resample_bad, max_tries=opts.max_tries,
            max_out_of_range=opts.max_out_of_range, progress=progress,
        )
        res.seed, res.batch_size, res.tiles = drawn.seed, drawn.batch_size, drawn.tiles

        def write(path: Path, rgb: np.ndarray) -> None:
            data = encode_image(pic.with_rgb(np.clip(rgb, 0.0, 1.0)), fmt, quality=opts.quality, bit_depth=opts.bit_depth)
            write_bytes_atomic(path, data, overwrite=opts.overwrite)
            written.append(path)

        for s, name in zip(drawn.samples, names):
            path = folder / name
            if s.finite:
                write(path, s.image)
            entry = {"index": s.index, "tau": s.tau, "offset": s.offset, "seed": s.seed,
                     "output": str(path) if s.finite else None, "status": s.status, **asdict(s.stats),
                     "rejected_seeds": s.rejected_seeds}
            res.samples.append(entry)
        for (t, o), name in mean_names.items():
            m = drawn.mean(t, o)
            group = drawn.groups()[(t, o)]
            path = folder / name
            if m is not None:
                write(path, m)
            res.means.append({"tau": t, "offset": o, "output": str(path) if m is not None else None,
                              "n": sum(s.finite for s in group)})
        if sheet:
            grid = contact_sheet([_SampleRows(s) for s in drawn.samples], [_label(s) for s in drawn.samples],
                                 rows=_sheet_rows(drawn.samples), flagged=[s.bad for s in drawn.samples])
            write_bytes_atomic(folder / sheet, _encode_png(grid), overwrite=opts.overwrite)
            written.append(folder / sheet)
            res.sheet = str(folder / sheet)
        res.status = "ok" if all(s.finite for s in drawn.samples) else "partial"
        if res.status == "partial":
            bad = sum(not s.finite for s in drawn.samples)
            res.error = (f"{input}: {bad} sample(s) had non-finite values and were not written"
                         + ("" if opts.resample_bad else "; pass --resample-bad to redraw them"))
    except LLEError as e:
        res.error = str(e)
    except OSError as e:
        res.error = f"{input}: {e.strerror or e}"
    except BaseException:
        # Ctrl-C between two writes: the caller has printed none of these files, and --skip-existing
        # must find this input absent (redrawn whole), not half done
        for path in written:
            path.unlink(missing_ok=True)
        raise
    finally:
        if drawn is not None:
            drawn.close()  # a large image's samples sit in a temporary file until now
    res.seconds = round(time.perf_counter() - start, 4)
    return res

