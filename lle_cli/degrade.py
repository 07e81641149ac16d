"""A synthetic low-light model: turn a well-exposed photo into a plausible dark, noisy capture of it.

Used to make paired training data (``lle train synth-pairs``) where no real pairs may be trained on.
Every function is pure: the randomness comes from an explicit ``numpy.random.Generator``, so the same
seed always gives the same pair.

For a normally exposed sRGB image ``x`` in [0, 1] (values per pixel and channel ``c``):

1. linearise with the display gamma:               ``L = x ** 2.2``
2. optics: a mild Gaussian blur of width ``beta`` pixels (``beta = 0``: none):  ``L' = G_beta * L``
3. scale the exposure by ``k`` (log-uniform) and by per-channel gains ``w_c`` (a white-balance
   error or a coloured illuminant; ``w_g = 1``, ``log w_r``, ``log w_b`` uniform): ``E_c = k w_c L'_c``
4. shot and read noise (the heteroscedastic Gaussian approximation of Poisson-Gaussian sensor
   noise, Foi et al. 2008):                         ``N = E + sqrt(a * E + b) * n``,  ``n ~ N(0, 1)``
   with shot gain ``a`` and read variance ``b = sigma_r ** 2`` (both log-uniform)
5. tone curve: a camera gamma ``g`` then a contrast term ``s`` (``s > 0`` an S-curve, ``s < 0``
   flatter):  ``t = clip(N, 0, 1) ** (1 / g)``,  ``y = t + s * (3 t^2 - 2 t^3 - t)``
6. quantise to 8 bits: ``round(255 * y) / 255``; optionally (probability ``p_jpeg``) JPEG-compress
   with quality ``q``.

The default ranges give mean brightness and noise comparable to LOL's low images (mean 0.03-0.10,
about 5-25% of the normal image, visibly noisy in flat regions), with the colour casts, soft optics,
tone curves and compression of phone and camera files. ``DegradeSpec.classic()`` is the earlier
model (steps 1, 3 without gains, 4, 5 without contrast, 6 without JPEG), kept for comparisons.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["DegradeSpec", "DegradeParams", "sample_params", "degrade", "write_synthetic_pairs", "DISPLAY_GAMMA"]

DISPLAY_GAMMA = 2.2


@dataclass(frozen=True)
class DegradeSpec:
    """Ranges the per-image parameters are drawn from (``*_range`` are (low, high))."""

    exposure_range: tuple[float, float] = (0.003, 0.05)  # k, log-uniform
    shot_range: tuple[float, float] = (1e-4, 3e-3)  # a, log-uniform
    # sigma_r, log-uniform; up to 3.5e-3 because LOL's and phones' dark frames carry more read noise
    # than the first model's 2e-3 allowed (6e-3 at the lowest exposures left no recoverable image)
    read_sigma_range: tuple[float, float] = (3e-4, 3.5e-3)
    gamma_range: tuple[float, float] = (2.0, 2.6)  # g, uniform
    wb_log_range: float = 0.25  # |log w_r|, |log w_b| <= this (about +-28 %)
    contrast_range: tuple[float, float] = (-0.2, 0.4)  # s, uniform
    blur_probability: float = 0.4
    blur_range: tuple[float, float] = (0.3, 1.2)  # beta in pixels, uniform
    jpeg_probability: float = 0.5
    jpeg_quality_range: tuple[int, int] = (50, 95)

    @classmethod
    def classic(cls) -> "DegradeSpec":
        """The first model (exposure, noise, gamma): no casts, blur, contrast or JPEG."""
        return cls(read_sigma_range=(2e-4, 2e-3), wb_log_range=0.0, contrast_range=(0.0, 0.0), blur_probability=0.0,
                   jpeg_probability=0.0, jpeg_quality_range=(60, 95))

    def __post_init__(self) -> None:
        for name in ("exposure_range", "shot_range", "read_sigma_range", "gamma_range", "blur_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be 0 < low <= high, not {(lo, hi)}")
        if not 0 <= self.wb_log_range <= 1:
            raise ValueError("wb_log_range must be in [0, 1]")
        if not -0.5 <= self.contrast_range[0] <= self.contrast_range[1] <= 0.5:
            raise ValueError("contrast_range must be -0.5 <= low <= high <= 0.5 (the curve stays monotonic)")
        if not 0 <= self.blur_probability <= 1:
            raise ValueError("blur_probability must be in [0, 1]")
        if not self.exposure_range[1] <= 1:
            raise ValueError("exposure_range must stay within (0, 1]: the model darkens")
        if not 0 <= self.jpeg_probability <= 1:
            raise ValueError("jpeg_probability must be in [0, 1]")
        if not 1 <= self.jpeg_quality_range[0] <= self.jpeg_quality_range[1] <= 100:
            raise ValueError("jpeg_quality_range must be 1 <= low <= high <= 100")


@dataclass(frozen=True)
class DegradeParams:
    """One image's draw: k, a, sigma_r, g, the JPEG quality (None: no JPEG), gains, contrast, blur."""

    exposure: float
    shot: float
    read_sigma: float
    gamma: float
    jpeg_quality: int | None = None
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)  # w_r, w_g, w_b
    contrast: float = 0.0  # s
    blur: float = 0.0  # beta, pixels

    def to_dict(self) -> dict:
        return asdict(self)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_params(rng: np.random.Generator, spec: DegradeSpec = DegradeSpec()) -> DegradeParams:
    """Draw one image's parameters from ``spec`` (always the same ten draws, so streams stay aligned)."""
    k = _log_uniform(rng, *spec.exposure_range)
    a = _log_uniform(rng, *spec.shot_range)
    s = _log_uniform(rng, *spec.read_sigma_range)
    g = float(rng.uniform(*spec.gamma_range))
    use_jpeg = rng.uniform() < spec.jpeg_probability
    q = int(rng.integers(spec.jpeg_quality_range[0], spec.jpeg_quality_range[1] + 1))
    wr, wb = (float(math.exp(v)) for v in rng.uniform(-spec.wb_log_range, spec.wb_log_range, size=2))
    c = float(rng.uniform(*spec.contrast_range))
    use_blur = rng.uniform() < spec.blur_probability
    beta = float(rng.uniform(*spec.blur_range))
    return DegradeParams(k, a, s, g, q if use_jpeg else None, (wr, 1.0, wb), c, beta if use_blur else 0.0)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) array, edges reflected; ``sigma <= 0`` returns ``x``."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        p = np.pad(x, pad, mode="reflect" if x.shape[axis] > r else "edge")
        n = x.shape[axis]
        x = sum(t * np.take(p, np.arange(i, i + n), axis=axis) for i, t in enumerate(taps))
    return x


def degrade(x: np.ndarray, params: DegradeParams, rng: np.random.Generator) -> np.ndarray:
    """Steps 1-6 above: (H, W, 3) float in [0, 1] -> the low-light uint8 image (H, W, 3)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"degrade needs an (H, W, 3) RGB image, not shape {x.shape}")
    lin = gaussian_blur(np.clip(x, 0.0, 1.0) ** DISPLAY_GAMMA, params.blur)  # 1, 2
    e = params.exposure * lin * np.asarray(params.gains, dtype=np.float64)  # 3
    n = e + np.sqrt(params.shot * e + params.read_sigma**2) * rng.standard_normal(e.shape)  # 4
    t = np.clip(n, 0.0, 1.0) ** (1.0 / params.gamma)  # 5
    y = t + params.contrast * (3 * t**2 - 2 * t**3 - t)
    out = np.round(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)  # 6
    if params.jpeg_quality is not None:
        out = _jpeg(out, params.jpeg_quality)
    return out


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


# ---- materialising a paired data set (I/O) ---------------------------------------------------------
def _pair_seed(seed: int, key: str, variant: int) -> list[int]:
    import hashlib

    h = hashlib.sha256(f"{int(seed)}|{key}|{int(variant)}".encode()).digest()
    return [int.from_bytes(h[i : i + 4], "little") for i in range(0, 16, 4)]


def write_synthetic_pairs(
    source: Path, out: Path, *, variants: int = 1, seed: int = 0, spec: DegradeSpec = DegradeSpec(),
    overwrite: bool = False, progress=None,
) -> list[dict]:
    """Degrade every image under ``source`` ``variants`` times into LOL-layout ``out/low`` + ``out/high``.

    Pair ``<name>_v<k>`` gets its own generator seeded from (seed, the image's path relative to
    ``source``, k), so adding or removing images never changes the other pairs. The high image is the
    source re-saved as PNG. ``out/pairs.json`` records the spec, the seed and every pair's parameters.
    Returns those records.
    """
    import json

    from PIL import Image

    from .atomic import replacing, write_text_atomic
    from .errors import InputError, OutputExistsError
    from .formats import list_image_files
    from .imageio import read_rgb8

    source, out = Path(source), Path(out)
    if variants < 1:
        raise ValueError("variants must be at least 1")
    files = list_image_files(source)
    if not files:
        raise InputError(f"{source}: no images found (png, jpg, tif, webp, heic, raw, ...) to degrade")
    low_dir, high_dir = out / "low", out / "high"
    for d in (low_dir, high_dir):
        if d.is_dir() and any(d.iterdir()) and not overwrite:
            raise OutputExistsError(f"{d}: not empty; pass --overwrite to replace its pairs, or choose another -o")
        d.mkdir(parents=True, exist_ok=True)

    def save(img: np.ndarray, path: Path) -> None:
        with replacing(path) as tmp:
            Image.fromarray(img).save(tmp, format="PNG")

    records = []
    for n, f in enumerate(files):
        rel = f.relative_to(source).as_posix()
        high = read_rgb8(f)  # as lle reads photos: upright, any format it takes
        stem = Path(rel).with_suffix("").as_posix().replace("/", "_")
        for k in range(variants):
            rng = np.random.default_rng(_pair_seed(seed, rel, k))
            params = sample_params(rng, spec)
            low = degrade(high.astype(np.float64) / 255.0, params, rng)
            name = f"{stem}_v{k}.png"
            save(low, low_dir / name)
            save(high, high_dir / name)
            records.append({"name": name, "source": rel, "variant": k, **params.to_dict()})
        if progress:
            progress(n + 1, len(files))
    manifest = {"seed": seed, "variants": variants, "spec": asdict(spec), "display_gamma": DISPLAY_GAMMA,
                "source": str(source), "pairs": records}
    write_text_atomic(out / "pairs.json", json.dumps(manifest, indent=2) + "\n")
    return records
