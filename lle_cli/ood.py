"""Out-of-distribution scores of LLFlow's encoder features (Hong et al., ICCV 2023, Sec. 3.2).

A conditional flow's inverse "explodes" (NaN/Inf or far out-of-range pixels) when the encoder's
features of the dark input are unlike those of its training inputs. The paper measures that with
the Mahalanobis distance of the features from the training features' Gaussian (eq. 11-12):

    s_OOD(y) = sqrt((g(y) - mu)^T Sigma^-1 (g(y) - mu)),

with ``g`` the outputs of RRDB blocks 1, 3, 5, 7 concatenated (appendix A.1.2; for LOL-pc these are
exactly the blocks LLFlow stacks onto its conditioning, ``LLFlowConfig.stack_blocks``), scored per
100x100 patch. Here a patch's feature is the spatial mean of those block outputs over the patch
(the appendix does not say how the 2D maps become one vector; averaging keeps the dimension at
``nf * len(blocks)``, 256 for LOL-pc, so the covariance is well estimated from a few thousand patches).
An image scores as its worst patch: explosions are local (the paper's black patches).

Numerics: features, mean and covariance are float64. The sample covariance of a few hundred
patches in 256 dimensions is close to singular, so it is shrunk towards a scaled identity with the
Ledoit-Wolf coefficient (or a given one), plus a tiny ridge; both are recorded in the statistics.
Distances use the Cholesky factor: ``d = ||L^-1 (v - mu)||`` with ``Sigma = L L^T``.

The warning threshold is a high percentile (default 99) of *out-of-fold* image scores: each fold
of training images is scored against statistics fitted without it, because in-sample distances are
biased low when patches are few relative to the dimension.

Statistics files are safetensors: ``mean`` (D,), ``covariance`` (D, D, regularised; what the
distance uses) and ``train_scores`` (out-of-fold image scores), float64, plus one metadata key
``lle_ood`` (JSON): the feature definition, patch size, regularisation, threshold, counts and the
model (name, family, architecture, weights sha256) they belong to; other models are refused.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .errors import InputError, LLEError, UsageError, WeightsError
from .imageio import read_image
from .registry import ModelEntry
from .runner import LoadedModel
from .tiling import TilePlan

__all__ = [
    "FEATURE_KIND",
    "DEFAULT_PATCH",
    "DEFAULT_PERCENTILE",
    "StatsMismatchError",
    "FeatureSpec",
    "OODStats",
    "PatchScore",
    "ImageScore",
    "patch_boxes",
    "pool_boxes",
    "ledoit_wolf_shrinkage",
    "fit_gaussian",
    "cholesky_whitener",
    "mahalanobis",
    "correlations",
    "ensure_feature_model",
    "can_score",
    "error_mask",
    "default_blocks",
    "feature_plan",
    "patch_features",
    "fit_stats",
    "fit_ood",
    "score_array",
    "score_ood",
    "validate_image",
    "summarise",
    "heatmap",
    "load_stats",
    "shipped_stats_path",
    "stats_for",
    "ood_warner",
]

FEATURE_KIND = "llflow-rrdb-blocks-patch-mean"
DEFAULT_PATCH = 100  # pixels; the paper's LOL patches (appendix A.1.2)
DEFAULT_PERCENTILE = 99.0
RIDGE = 1e-6  # added to the diagonal, relative to the mean variance: keeps Cholesky safe at shrinkage 0
FOLDS = 5
STATS_FORMAT = 1
_META_KEY = "lle_ood"

ProgressFn = Callable[[int, int], None]


class StatsMismatchError(UsageError):
    """Statistics fitted for another model (or other weights) than the one in use."""


# --------------------------------------------------------------------------------------------
# Pure math


def patch_boxes(height: int, width: int, patch: int) -> np.ndarray:
    """``(P, 4)`` int boxes ``(y0, x0, y1, x1)`` of ``patch``-sized squares covering the image.

    A regular grid; the last row and column are aligned with the border (overlapping their
    neighbours) so every pixel is covered and every patch has the full size. An image smaller than
    ``patch`` along an axis is one patch of its own size along that axis.
    """
    if patch < 2:
        raise UsageError(f"--patch-size {patch}: must be at least 2 pixels")

    def starts(n: int) -> list[int]:
        if n <= patch:
            return [0]
        return sorted({min(i * patch, n - patch) for i in range(math.ceil(n / patch))})

    ph, pw = min(patch, height), min(patch, width)
    return np.array([(y, x, y + ph, x + pw) for y in starts(height) for x in starts(width)], dtype=np.int64)


def pool_boxes(fmap: torch.Tensor, boxes: np.ndarray, *, scale: int = 2, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Mean of a (C, h, w) feature map over each image box, (P, C) float64.

    The map has 1/``scale`` of the image resolution, and image pixel (0, 0) sits at ``offset`` pixels
    into the (padded) image it was computed from. A box covers every feature pixel it touches.
    """
    out = np.empty((len(boxes), fmap.shape[0]), dtype=np.float64)
    top, left = offset
    h, w = fmap.shape[-2:]
    for i, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        fy0, fx0 = (y0 + top) // scale, (x0 + left) // scale
        fy1, fx1 = min(h, -(-(y1 + top) // scale)), min(w, -(-(x1 + left) // scale))
        out[i] = fmap[:, fy0:fy1, fx0:fx1].double().mean(dim=(1, 2)).cpu().numpy()
    return out


def ledoit_wolf_shrinkage(centred: np.ndarray) -> float:
    """Ledoit & Wolf (2004)'s coefficient for shrinking the sample covariance towards ``mu * I``.

    ``centred``: (N, D) float64 rows minus their mean. Uses the 1/N sample covariance ``S``:
    ``delta^2 = ||S - mu I||^2 / D``, ``beta^2 = min(delta^2, sum_k ||x_k x_k^T - S||^2 / (N^2 D))``,
    shrinkage ``beta^2 / delta^2`` in [0, 1].
    """
    n, d = centred.shape
    s = centred.T @ centred / n
    mu = np.trace(s) / d
    delta2 = (np.sum(s * s) - 2 * mu * np.trace(s) + mu * mu * d) / d
    if delta2 <= 0:
        return 1.0
    # sum_k ||x_k x_k^T - S||_F^2 = sum_k ||x_k||^4 - N ||S||_F^2
    norms2 = np.einsum("ij,ij->i", centred, centred)
    beta2 = (np.sum(norms2**2) - n * np.sum(s * s)) / (n * n * d)
    return float(min(max(beta2, 0.0), delta2) / delta2)


def fit_gaussian(features: np.ndarray, shrinkage: float | None = None) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Mean, regularised covariance, the shrinkage used and the ridge added, all float64.

    ``Sigma = (1 - a) S + a mu I + r I`` with ``S`` the 1/N sample covariance, ``mu`` its mean
    variance, ``a`` the shrinkage (None: Ledoit-Wolf) and ``r = RIDGE * mu``.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise UsageError(f"need at least 2 patches to fit statistics, got {x.shape[0] if x.ndim == 2 else 0}; add images or lower --patch-size")
    if not np.isfinite(x).all():
        raise LLEError("the encoder produced non-finite features; refit with --precision fp32")
    mean = x.mean(axis=0)
    c = x - mean
    n, d = c.shape
    s = c.T @ c / n
    mu = float(np.trace(s) / d)
    if not mu > 0:
        raise UsageError("the training features do not vary (all patches identical); use more varied training images")
    a = ledoit_wolf_shrinkage(c) if shrinkage is None else float(shrinkage)
    if not 0.0 <= a <= 1.0:
        raise UsageError(f"--shrinkage {shrinkage}: must be between 0 and 1 (or auto)")
    ridge = RIDGE * mu
    cov = (1.0 - a) * s
    cov[np.diag_indices(d)] += a * mu + ridge
    return mean, cov, a, ridge


def cholesky_whitener(cov: np.ndarray) -> np.ndarray:
    """``L^-1`` for ``cov = L L^T``: ``||L^-1 v||`` is the Mahalanobis norm of ``v``."""
    try:
        chol = np.linalg.cholesky(np.asarray(cov, dtype=np.float64))
    except np.linalg.LinAlgError:
        raise WeightsError("the statistics' covariance is not positive definite; refit them with `lle score-ood fit`") from None
    return np.linalg.inv(chol)


def mahalanobis(features: np.ndarray, mean: np.ndarray, whitener: np.ndarray) -> np.ndarray:
    """Eq. 11 for each row of (N, D) ``features``: ``||W (v - mu)||``, float64 (N,)."""
    diff = np.asarray(features, dtype=np.float64) - mean
    return np.linalg.norm(diff @ whitener.T, axis=1)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N with ties given their average rank (for Spearman's rho)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def correlations(x: Iterable[float], y: Iterable[float]) -> tuple[float | None, float | None]:
    """Pearson's r and Spearman's rho; None where undefined (fewer than 3 points or a constant side)."""
    a, b = np.asarray(list(x), dtype=np.float64), np.asarray(list(y), dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]

    def pearson(u: np.ndarray, v: np.ndarray) -> float | None:
        if len(u) < 3 or np.ptp(u) == 0 or np.ptp(v) == 0:
            return None
        u, v = u - u.mean(), v - v.mean()
        return float(np.clip((u @ v) / math.sqrt((u @ u) * (v @ v)), -1.0, 1.0))

    return pearson(a, b), pearson(_ranks(a), _ranks(b)) if len(a) >= 3 else None


# --------------------------------------------------------------------------------------------
# Features of an LLFlow-family model


@dataclass(frozen=True)
class FeatureSpec:
    """Which encoder features, pooled how: the mean over each ``patch``-pixel square of the
    concatenated outputs of RRDB ``blocks`` (at half resolution)."""

    blocks: tuple[int, ...]
    patch_size: int = DEFAULT_PATCH

    def to_dict(self) -> dict[str, Any]:
        return {"kind": FEATURE_KIND, "blocks": list(self.blocks), "patch_size": self.patch_size, "pool": "mean",
                "resolution": "1/2 of the padded input (the RRDB trunk's)"}


def _trunk(model: LoadedModel) -> torch.nn.Sequential:
    if not can_score(model.entry):
        raise UsageError(
            f"model {model.name} ({model.entry.family}) has no LLFlow encoder to score; "
            "score-ood works with LLFlow-family models (e.g. --model llflow)"
        )
    return model.module.RRDB.RRDB_trunk


def ensure_feature_model(model: LoadedModel) -> None:
    """``UsageError`` unless the model has LLFlow's RRDB encoder."""
    _trunk(model)


def can_score(entry: ModelEntry) -> bool:
    """Whether models of this registry entry's family have the encoder score-ood reads
    (``FamilySpec.ood_features``: LLFlow's RRDB trunk and ``block_features``)."""
    from .models import FAMILIES

    spec = FAMILIES.get(entry.family)
    return spec is not None and spec.ood_features


def default_blocks(model: LoadedModel) -> tuple[int, ...]:
    """The model's stacked RRDB blocks (LOL-pc: 1, 3, 5, 7, the paper's choice), else all of them."""
    trunk = _trunk(model)
    stack = tuple(getattr(getattr(model.module, "config", None), "stack_blocks", ()) or ())
    return stack or tuple(range(len(trunk)))


def _check_blocks(model: LoadedModel, blocks: tuple[int, ...]) -> None:
    nb = len(_trunk(model))
    if not blocks or any(not 0 <= b < nb for b in blocks) or len(set(blocks)) != len(blocks):
        raise UsageError(f"--blocks {','.join(map(str, blocks)) or '(none)'}: give distinct RRDB block indices 0..{nb - 1} of model {model.name}")


class _Enough(Exception):
    """Raised by the last needed block's hook: the rest of the encoder is not needed."""


def _feature_margin(last: int) -> int:
    """Pixels of the padded image that RRDB block ``last``'s output depends on, on each side, plus slack.

    The head reaches 4 px (the noise map's central difference, two 3x3 convolutions, the 2x2
    pooling); each RRDB block is 3 dense blocks of 5 chained 3x3 convolutions at half resolution,
    30 px. A tile whose blending weight is zero this far from its inner edges gives exactly the
    untiled features where the weight is not zero.
    """
    return 4 + 30 * (last + 1) + 8


def feature_plan(model: LoadedModel, height: int, width: int, spec: FeatureSpec) -> TilePlan | None:
    """Tiles for the encoder features of an image, or None to run it whole.

    The same budget as ``lle enhance`` (``LoadedModel.activation_budget``), priced at the family's
    full-pass ``activation_bytes`` (the trunk alone needs less). The margin is the needed blocks'
    whole reach (``_feature_margin``), so tiled features equal untiled ones up to float rounding;
    when tiles that wide would not fit the budget, the margin shrinks to what fits (no longer exact
    near seams, but bounded in memory).
    """
    from .tiling import plan_within_area, tile_overlap

    cfg = model.module.config
    step = model.spec.tile_multiple
    hp, wp = model._tiled_size(height, width)
    per_px = model.spec.activation_bytes(cfg)
    budget = model.activation_budget(height, width)
    if per_px * hp * wp <= budget:
        return None
    area = int(budget / per_px)
    margin = -(-_feature_margin(max(spec.blocks)) // step) * step
    while margin > step and (2 * tile_overlap(margin, step)) ** 2 > area:
        margin -= step
    overlap = tile_overlap(margin, step)
    plan = plan_within_area(hp, wp, area, overlap, margin, step, 2 * overlap)
    return plan if plan.tiled else None


def patch_features(model: LoadedModel, rgb: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """(P, D) float64 pooled features and their (P, 4) boxes for one (H, W, 3) image in [0, 1].

    Block outputs are pooled as they are produced (never all kept: at 2048x1536 each is ~200 MB), and
    the encoder stops after the last block needed. An image whose encoder pass would not fit the
    memory budget runs in tiles (``feature_plan``); each box then sums its tiles' blend-weighted
    features, which is the pooled mean of the blended feature map.
    """
    trunk = _trunk(model)
    _check_blocks(model, spec.blocks)
    h, w = rgb.shape[:2]
    boxes = patch_boxes(h, w, spec.patch_size)
    x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    plan = feature_plan(model, h, w, spec)
    if plan is None:
        with torch.inference_mode():
            lq, pad = model.module.prepare(x.to(model.device, model.input_dtype))
        pooled = _run_blocks(model, trunk, lq, spec, lambda index, out: pool_boxes(out[0], boxes, scale=lq.shape[-1] // out.shape[-1],
                                                                                   offset=(pad.top, pad.left)))
        feats = np.concatenate([pooled[i] for i in spec.blocks], axis=1)
    else:
        feats = _tiled_features(model, trunk, x, plan, boxes, spec)
    if not np.isfinite(feats).all():
        raise LLEError(f"model {model.name} produced non-finite encoder features; try --precision fp32")
    return feats, boxes


def _run_blocks(
    model: LoadedModel, trunk: torch.nn.Sequential, lq: torch.Tensor, spec: FeatureSpec,
    reduce: Callable[[int, torch.Tensor], np.ndarray],
) -> dict[int, np.ndarray]:
    """``reduce(block, output)`` of each needed block as the encoder produces it; stops after the last."""
    out: dict[int, np.ndarray] = {}
    last = max(spec.blocks)

    def hook(index: int) -> Callable[..., None]:
        def fn(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            out[index] = reduce(index, output)
            if index == last:
                raise _Enough

        return fn

    handles = [trunk[i].register_forward_hook(hook(i)) for i in set(spec.blocks)]
    try:
        with torch.inference_mode():
            model.module.condition(lq)
    except _Enough:
        pass
    finally:
        for hd in handles:
            hd.remove()
    return out


def _tiled_features(
    model: LoadedModel, trunk: torch.nn.Sequential, x: torch.Tensor, plan: TilePlan, boxes: np.ndarray, spec: FeatureSpec
) -> np.ndarray:
    """Box means of the blended block outputs, accumulated tile by tile.

    The blend weights sum to 1 at every pixel of the padded image; a feature pixel (2x2 pixels) takes
    the mean of its pixels' weights, which sum to 1 as well, so adding each tile's weighted box sums
    gives the box sums of the blended map. Boxes cover the feature pixels they touch, as ``pool_boxes``.
    """
    from .models.llflow import LLFlowTiles

    tiles = LLFlowTiles.of(model.module, x)
    top, left = tiles.pad.top, tiles.pad.left
    hp, wp = tiles.padded_size
    scale = 2  # the RRDB trunk runs at half the padded resolution
    fh, fw = hp // scale, wp // scale
    fy0 = (boxes[:, 0] + top) // scale
    fx0 = (boxes[:, 1] + left) // scale
    fy1 = np.minimum(fh, -(-(boxes[:, 2] + top) // scale))
    fx1 = np.minimum(fw, -(-(boxes[:, 3] + left) // scale))
    sums = {b: np.zeros((len(boxes), model.module.config.nf), dtype=np.float64) for b in spec.blocks}

    def half(weights: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(weights.astype(np.float64).reshape(-1, scale).mean(axis=1))

    for r, c in plan:
        origin = (r.start // scale, c.start // scale)
        wy, wx = half(r.weights), half(c.weights)
        live_y, live_x = np.flatnonzero(wy.numpy()), np.flatnonzero(wx.numpy())
        # the feature pixels this tile has a say in (non-zero weight), in whole-map coordinates
        live = (origin[0] + live_y[0], origin[0] + live_y[-1] + 1, origin[1] + live_x[0], origin[1] + live_x[-1] + 1)
        hit = np.flatnonzero((fy0 < live[1]) & (fy1 > live[0]) & (fx0 < live[3]) & (fx1 > live[2]))
        if not len(hit):
            continue
        lq = tiles.input(r, c).to(model.device, model.input_dtype)
        boxes_here = (fy0[hit], fy1[hit], fx0[hit], fx1[hit])
        _run_blocks(model, trunk, lq, spec, functools.partial(_add_box_sums, sums, hit, boxes_here, live, origin, wy, wx))
        del lq
    counts = ((fy1 - fy0) * (fx1 - fx0)).astype(np.float64)[:, None]
    return np.concatenate([sums[b] / counts for b in spec.blocks], axis=1)


def _add_box_sums(
    sums: dict[int, np.ndarray], hit: np.ndarray, boxes: tuple[np.ndarray, ...], live: tuple[int, int, int, int],
    origin: tuple[int, int], wy: torch.Tensor, wx: torch.Tensor, index: int, out: torch.Tensor,
) -> np.ndarray:
    """Add one tile's blend-weighted sums of block ``index``'s output ``out`` over each hit box."""
    fmap = out[0]
    (ly0, ly1, lx0, lx1), (oy, ox) = live, origin
    for i, by0, by1, bx0, bx1 in zip(hit, *boxes):
        y0, y1, x0, x1 = max(by0, ly0), min(by1, ly1), max(bx0, lx0), min(bx1, lx1)
        if y0 >= y1 or x0 >= x1:
            continue
        part = fmap[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox].double().cpu()
        sums[index][i] += torch.einsum("cyx,y,x->c", part, wy[y0 - oy : y1 - oy], wx[x0 - ox : x1 - ox]).numpy()
    return sums[index]


# --------------------------------------------------------------------------------------------
# Statistics


_SHA_CACHE: dict[tuple[str, int, int], str | None] = {}


def _weights_sha256(model: LoadedModel) -> str | None:
    """The loaded weights' sha256 as run records give it (cached per file: checks repeat per command)."""
    from .record import model_fields

    src = Path(model.weights_source)
    if model.weights_source == "embedded":
        return model_fields(model).get("weights_sha256")
    try:
        st = src.stat()
        key = (str(src.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        return model_fields(model).get("weights_sha256")  # embedded or not a file: nothing to hash
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = model_fields(model).get("weights_sha256")
    return _SHA_CACHE[key]


@dataclass
class OODStats:
    mean: np.ndarray  # (D,) float64
    covariance: np.ndarray  # (D, D) float64, regularised
    spec: FeatureSpec
    model: dict[str, Any]  # name, family, architecture, weights_sha256
    shrinkage: float
    ridge: float
    regularisation: str  # "ledoit-wolf" or "fixed"
    threshold: float
    percentile: float
    threshold_method: str
    n_images: int
    n_patches: int
    train_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # out-of-fold image scores
    lle_version: str = __version__
    _whitener: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def whitener(self) -> np.ndarray:
        if self._whitener is None:
            self._whitener = cholesky_whitener(self.covariance)
        return self._whitener

    def distances(self, features: np.ndarray) -> np.ndarray:
        return mahalanobis(features, self.mean, self.whitener)

    def metadata(self) -> dict[str, Any]:
        return {
            "format": STATS_FORMAT, "lle_version": self.lle_version, "feature": self.spec.to_dict(),
            "patch_size": self.spec.patch_size, "model": self.model,
            "regularisation": {"method": self.regularisation, "shrinkage": self.shrinkage, "ridge": self.ridge,
                               "formula": "(1 - shrinkage) * S + (shrinkage * mean_variance + ridge) * I, S the 1/N sample covariance"},
            "threshold": self.threshold, "threshold_percentile": self.percentile, "threshold_method": self.threshold_method,
            "image_score": "max over the image's patches", "n_images": self.n_images, "n_patches": self.n_patches,
        }

    def save(self, path: str | Path) -> None:
        from .weights import save_safetensors

        tensors = {"mean": torch.from_numpy(self.mean), "covariance": torch.from_numpy(self.covariance),
                   "train_scores": torch.from_numpy(np.asarray(self.train_scores, dtype=np.float64))}
        save_safetensors(tensors, Path(path), metadata={_META_KEY: json.dumps(self.metadata(), sort_keys=True)})

    def check_model(self, model: LoadedModel, *, source: str = "the statistics") -> None:
        """``StatsMismatchError`` unless these statistics were fitted for this model and weights."""
        mine = self.model
        sha = _weights_sha256(model)
        fix = "fit statistics for it with `lle score-ood fit TRAIN_DIR`"
        if mine.get("name") != model.name:
            raise StatsMismatchError(f"{source}: fitted for model {mine.get('name')}, not {model.name}; {fix}")
        if mine.get("weights_sha256") and sha and mine["weights_sha256"] != sha:
            raise StatsMismatchError(
                f"{source}: fitted for {model.name} weights sha256 {mine['weights_sha256'][:12]}..., these are {sha[:12]}...; {fix}"
            )
        nf = getattr(getattr(model.module, "config", None), "nf", None)
        if nf is not None and nf * len(self.spec.blocks) != self.dim:
            raise StatsMismatchError(f"{source}: {self.dim}-dimensional features do not fit model {model.name}; {fix}")
        _check_blocks(model, self.spec.blocks)


def load_stats(path: str | Path) -> OODStats:
    """Read a statistics file written by ``OODStats.save``; a clear error for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such statistics file; write one with `lle score-ood fit TRAIN_DIR -o {path.name}`")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get(_META_KEY, "null"))
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable statistics file ({e}); refit it with `lle score-ood fit`") from None
    if not isinstance(meta, dict) or meta.get("format") != STATS_FORMAT or {"mean", "covariance"} - arrays.keys():
        raise UsageError(f"{path}: not an lle score-ood statistics file; write one with `lle score-ood fit`")
    feat = meta["feature"]
    if feat.get("kind") != FEATURE_KIND:
        raise UsageError(f"{path}: features of kind {feat.get('kind')!r} are not supported by this lle ({__version__})")
    reg = meta["regularisation"]
    mean, cov = arrays["mean"].astype(np.float64), arrays["covariance"].astype(np.float64)
    if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
        raise UsageError(f"{path}: mean and covariance shapes do not match; refit it with `lle score-ood fit`")
    return OODStats(
        mean=mean, covariance=cov, spec=FeatureSpec(tuple(feat["blocks"]), int(meta["patch_size"])), model=meta["model"],
        shrinkage=float(reg["shrinkage"]), ridge=float(reg["ridge"]), regularisation=reg["method"],
        threshold=float(meta["threshold"]), percentile=float(meta["threshold_percentile"]),
        threshold_method=meta["threshold_method"], n_images=int(meta["n_images"]), n_patches=int(meta["n_patches"]),
        train_scores=arrays.get("train_scores", np.zeros(0)).astype(np.float64), lle_version=meta.get("lle_version", "?"),
    )


def shipped_stats_path(entry: ModelEntry) -> Path | None:
    """The statistics file the manifest ships with a model (verified sha256), or None."""
    rel = getattr(entry, "ood_stats", None)
    if not rel:
        return None
    p = resources.files("lle_cli") / rel
    if not p.is_file():
        return None
    from .weights import verify_sha256

    path = Path(str(p))
    verify_sha256(path, getattr(entry, "ood_stats_sha256", None), what=f"the OOD statistics of {entry.name}")
    return path


def stats_for(model: LoadedModel, path: OODStats | str | Path | None) -> tuple[OODStats, str]:
    """The statistics to score with (``path``, else the model's shipped ones) and where they came from."""
    if isinstance(path, OODStats):
        stats, source = path, "the statistics"
    elif path is not None:
        stats, source = load_stats(path), str(path)
    else:
        shipped = shipped_stats_path(model.entry)
        if shipped is None:
            raise UsageError(
                f"model {model.name} ships no OOD statistics; fit them with `lle score-ood fit TRAIN_DIR -m {model.name} "
                "-o stats.safetensors` and pass --stats stats.safetensors"
            )
        stats, source = load_stats(shipped), f"shipped with {model.name}"
    stats.check_model(model, source=source)
    return stats, source


def _read_rgb(path: str, stdin: bytes | None = None) -> np.ndarray:
    pic = read_image(stdin if stdin is not None else b"", name="<stdin>") if path == "-" else read_image(path)
    return pic.rgb


def fit_stats(
    per_image: list[np.ndarray],
    *,
    model: dict[str, Any],
    spec: FeatureSpec,
    shrinkage: float | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    folds: int = FOLDS,
) -> OODStats:
    """Statistics from each training image's (P_i, D) patch features (see the module docstring)."""
    if not 0 < percentile <= 100:
        raise UsageError(f"--percentile {percentile}: must be in (0, 100]")
    allf = np.concatenate(per_image, axis=0)
    mean, cov, a, ridge = fit_gaussian(allf, shrinkage)
    k = min(folds, len(per_image))
    scores = np.empty(len(per_image), dtype=np.float64)
    method = f"{percentile:g}th percentile of "
    rest_sizes = [sum(len(f) for j, f in enumerate(per_image) if j % k != fold) for fold in range(k)] if k >= 2 else []
    if k >= 2 and min(rest_sizes) >= 2:
        for fold in range(k):
            rest = np.concatenate([f for j, f in enumerate(per_image) if j % k != fold], axis=0)
            m, c, _, _ = fit_gaussian(rest, shrinkage)
            w = cholesky_whitener(c)
            for j in range(fold, len(per_image), k):
                scores[j] = mahalanobis(per_image[j], m, w).max()
        method += f"{k}-fold out-of-fold image scores (each image scored by statistics fitted without it)"
    else:
        w = cholesky_whitener(cov)
        scores[:] = [mahalanobis(f, mean, w).max() for f in per_image]
        method += "in-sample image scores (too few images for folds; biased low)"
    return OODStats(
        mean=mean, covariance=cov, spec=spec, model=model, shrinkage=a, ridge=ridge,
        regularisation="ledoit-wolf" if shrinkage is None else "fixed",
        threshold=float(np.percentile(scores, percentile)), percentile=float(percentile), threshold_method=method,
        n_images=len(per_image), n_patches=int(allf.shape[0]), train_scores=scores,
    )


def _model_fields(model: LoadedModel) -> dict[str, Any]:
    return {"name": model.name, "family": model.entry.family, "architecture": model.entry.architecture,
            "weights_sha256": _weights_sha256(model)}


def fit_ood(
    model: LoadedModel,
    inputs: Iterable[str],
    *,
    patch_size: int = DEFAULT_PATCH,
    blocks: tuple[int, ...] | None = None,
    shrinkage: float | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    progress: ProgressFn | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> OODStats:
    """Fit statistics on a model's training inputs (dark images). Unreadable images are reported to
    ``on_error(path, message)`` and skipped; no readable image is an error."""
    ensure_feature_model(model)
    spec = FeatureSpec(tuple(blocks) if blocks else default_blocks(model), patch_size)
    _check_blocks(model, spec.blocks)
    paths = list(inputs)
    per_image = []
    for i, path in enumerate(paths):
        try:
            per_image.append(patch_features(model, _read_rgb(path), spec)[0])
        except InputError as e:
            if on_error is None:
                raise
            on_error(path, str(e))
        if progress:
            progress(i + 1, len(paths))
    if not per_image:
        raise UsageError("no readable training images; pass a folder of the model's training inputs (the dark images)")
    return fit_stats(per_image, model=_model_fields(model), spec=spec, shrinkage=shrinkage, percentile=percentile)


# --------------------------------------------------------------------------------------------
# Scoring and validation


@dataclass
class PatchScore:
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 in image pixels
    score: float
    error_probability: float | None = None  # with validation: fraction of the patch's values that were errors


@dataclass
class ImageScore:
    input: str
    status: str = "ok"  # "ok" or "error"
    error: str | None = None
    score: float | None = None  # max over patches
    mean_patch_score: float | None = None
    above_threshold: bool | None = None
    width: int | None = None
    height: int | None = None
    patches: list[PatchScore] = field(default_factory=list)
    # with validation (sampling)
    samples: int | None = None
    nonfinite_samples: int | None = None
    error_probability: float | None = None  # mean over samples of the fraction of error values
    seed: int | None = None
    heatmap: str | None = None  # where a heat map was written

    def to_dict(self, *, patches: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not patches:
            d.pop("patches")
        return d


def score_array(model: LoadedModel, stats: OODStats, rgb: np.ndarray, *, name: str = "<array>") -> ImageScore:
    """Patch and image scores of one (H, W, 3) image in [0, 1] (statistics already checked)."""
    feats, boxes = patch_features(model, rgb, stats.spec)
    d = stats.distances(feats)
    return ImageScore(
        input=name, score=float(d.max()), mean_patch_score=float(d.mean()), above_threshold=bool(d.max() > stats.threshold),
        height=int(rgb.shape[0]), width=int(rgb.shape[1]),
        patches=[PatchScore(tuple(int(v) for v in b), float(s)) for b, s in zip(boxes, d)],
    )


def error_mask(img: np.ndarray) -> np.ndarray:
    """Per value: non-finite or outside ``sampling.OUT_OF_RANGE`` (the paper's erroneous pixels)."""
    from .sampling import OUT_OF_RANGE

    lo, hi = OUT_OF_RANGE
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(img) | (img < lo) | (img > hi)


def validate_image(
    model: LoadedModel, result: ImageScore, rgb: np.ndarray, *, n: int, tau: float, seed: int, batch_size: int | None = None
) -> ImageScore:
    """Draw ``n`` samples (``sampling.sample_array``) and add the observed error probabilities.

    Error probability: the fraction of values that are non-finite or outside [-0.5, 1.5] before
    clamping (``nonfinite_fraction + out_of_range_fraction`` of each sample), averaged over samples;
    per patch the same over the patch's values.
    """
    from .sampling import sample_array

    h, w = rgb.shape[:2]
    with sample_array(model, rgb, n=n, taus=(tau,), seed=seed, batch_size=batch_size) as drawn:
        errs = [s.stats.nonfinite_fraction + s.stats.out_of_range_fraction for s in drawn.samples]
        result.samples = len(drawn.samples)
        result.nonfinite_samples = sum(not s.finite for s in drawn.samples)
        result.error_probability = float(np.mean(errs))
        result.seed = drawn.seed
        # erroneous values per pixel over all samples, counted a band of rows at a time: samples of a
        # large image are read back from the sampler's store, never all in memory
        counts = np.zeros((h, w), dtype=np.uint16 if 3 * len(drawn.samples) < 2**16 else np.uint32)
        step = max(1, (16 << 20) // max(w * 12, 1))
        for s in drawn.samples:
            for y0 in range(0, h, step):
                counts[y0 : y0 + step] += error_mask(s.rows(y0, y0 + step)).sum(axis=2, dtype=counts.dtype)
    for p in result.patches:
        y0, x0, y1, x1 = p.box
        values = (y1 - y0) * (x1 - x0) * 3 * result.samples
        p.error_probability = float(counts[y0:y1, x0:x1].sum(dtype=np.float64) / values)
    return result


def score_ood(
    model: LoadedModel,
    stats: OODStats,
    inputs: Iterable[str],
    *,
    stdin: bytes | None = None,
    validate: bool = False,
    n: int = 10,
    tau: float = 1.0,
    seed: int = 0,
    batch_size: int | None = None,
    each: Callable[[ImageScore, np.ndarray], None] | None = None,
) -> Iterator[ImageScore]:
    """One ``ImageScore`` per input, in input order; a bad input gives a result with status "error".

    ``each(result, rgb)`` is called for every scored image (e.g. to write a heat map); its
    ``LLEError``s become that image's error.
    """
    for path in inputs:
        try:
            rgb = _read_rgb(path, stdin)
            res = score_array(model, stats, rgb, name=path)
            if validate:
                validate_image(model, res, rgb, n=n, tau=tau, seed=seed, batch_size=batch_size)
            if each is not None:
                each(res, rgb)
        except UsageError:
            raise  # a bad option is the run's problem, not this image's
        except LLEError as e:  # unreadable input, non-finite features, an unwritable heat map, ...
            res = ImageScore(input=path, status="error", error=str(e) if path in str(e) else f"{path}: {e}")
        except OSError as e:
            res = ImageScore(input=path, status="error", error=f"{path}: {e.strerror or e}")
        yield res


def summarise(results: list[ImageScore], *, patches: bool = False) -> dict[str, Any]:
    """Set-level figures: counts, above-threshold images and, with validation, %Inf, the mean error
    probability and the score/error correlations (over images, and over patches with ``patches``)."""
    ok = [r for r in results if r.status == "ok"]
    out: dict[str, Any] = {"images": len(ok), "failed": len(results) - len(ok),
                           "above_threshold": sum(bool(r.above_threshold) for r in ok)}
    val = [r for r in ok if r.samples]
    if val:
        total = sum(r.samples for r in val)
        bad = sum(r.nonfinite_samples for r in val)
        pr, sr = correlations([r.score for r in val], [r.error_probability for r in val])
        out.update(samples=total, nonfinite_samples=bad, percent_inf=100.0 * bad / total,
                   mean_error_probability=float(np.mean([r.error_probability for r in val])),
                   pearson=pr, spearman=sr)
        if patches:
            ps = [p for r in val for p in r.patches]
            pp, sp = correlations([p.score for p in ps], [p.error_probability for p in ps])
            out.update(patches=len(ps), patch_pearson=pp, patch_spearman=sp)
    return out


# --------------------------------------------------------------------------------------------
# Heat map

# dark blue -> cyan -> yellow -> red, at score / threshold = 0, 2/3, 4/3, 2
_RAMP = np.array([[20, 20, 110], [0, 170, 230], [250, 230, 40], [220, 20, 20]], dtype=np.float64)


def heatmap(rgb: np.ndarray, result: ImageScore, threshold: float, *, alpha: float = 0.55) -> np.ndarray:
    """(H, W, 3) uint8: the image in grey under each patch's score colour (overlaps: the larger).

    Colours are relative to the threshold (yellow at the threshold, red at twice it), so maps of
    different images compare.
    """
    h, w = rgb.shape[:2]
    out = np.empty((h, w, 3), dtype=np.uint8)
    boxes = np.array([p.box for p in result.patches], dtype=np.int64).reshape(-1, 4)
    levels = [p.score / max(threshold, 1e-12) for p in result.patches]
    # a band of rows at a time: the float64 colour math costs ~100 bytes per pixel, 2.4 GB at 24 MP
    step = max(1, (16 << 20) // max(w * 100, 1))
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        level = np.zeros((r1 - r0, w), dtype=np.float64)
        for (y0, x0, y1, x1), v in zip(boxes, levels):
            if y0 < r1 and y1 > r0:
                band = level[max(y0, r0) - r0 : min(y1, r1) - r0, x0:x1]
                np.maximum(band, v, out=band)
        t = np.clip(level / 2.0, 0.0, 1.0) * (len(_RAMP) - 1)
        i = np.minimum(t.astype(np.int64), len(_RAMP) - 2)
        f = (t - i)[..., None]
        colour = _RAMP[i] * (1 - f) + _RAMP[i + 1] * f
        grey = (np.clip(rgb[r0:r1, :, :3], 0, 1) @ np.array([0.299, 0.587, 0.114]))[..., None] * 255.0
        out[r0:r1] = np.clip(np.rint((1 - alpha) * grey + alpha * colour), 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------
# Warnings in `lle enhance` / `lle sample`


def ood_warner(model: LoadedModel, stats_path: str | Path | None = None) -> Callable[[str, bytes | None], str | None] | None:
    """A ``warn(path, stdin_bytes) -> message or None`` for inputs above the statistics' threshold.

    With ``stats_path`` the statistics must fit the model (else ``StatsMismatchError``); without,
    the model's shipped statistics are used when there are any and they fit these weights. None when
    there is nothing to check against. Scoring never changes what the caller writes.
    """
    if stats_path is not None:
        if not can_score(model.entry):
            raise UsageError(f"--ood-stats: model {model.name} ({model.entry.family}) is not an LLFlow-family model; "
                             "OOD statistics apply to LLFlow models only (e.g. --model llflow)")
        stats, _ = stats_for(model, stats_path)
    else:
        if not can_score(model.entry):
            return None
        shipped = shipped_stats_path(model.entry)
        if shipped is None:
            return None
        stats = load_stats(shipped)
        try:
            stats.check_model(model)
        except StatsMismatchError:
            return None  # e.g. --weights of another training run: the shipped numbers say nothing about it

    def warn(path: str, stdin: bytes | None = None) -> str | None:
        try:
            res = score_array(model, stats, _read_rgb(path, stdin), name=path)
        except LLEError:
            return None  # unreadable inputs are reported by the command itself
        if not res.above_threshold:
            return None
        name = "stdin" if path == "-" else path
        return (f"{name}: unlike {model.name}'s training inputs (OOD score {res.score:.3g} > threshold {stats.threshold:.3g}); "
                "its samples may have artefacts or non-finite pixels (check with `lle score-ood --validate`)")

    return warn
