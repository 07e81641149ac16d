"""A synthetic low-light model: turn a well-exposed photo into a plausible dark, noisy capture of it.

Used to make paired training data (``lle train synth-pairs``) where no real pairs may be trained on.
Every function is pure: the randomness comes from an explicit ``numpy.random.Generator``, so the same
seed always gives the same pair.

For a normally exposed sRGB image ``x`` in [0, 1] (values per pixel and channel):

1. linearise with the display gamma:               ``L = x ** 2.2``
2. scale the exposure by ``k`` (log-uniform):       ``E = k * L``
3. shot and read noise (the heteroscedastic Gaussian approximation of Poisson-Gaussian sensor
   noise, Foi et al. 2008):                         ``N = E + sqrt(a * E + b) * n``,  ``n ~ N(0, 1)``
   with shot gain ``a`` and read variance ``b = sigma_r ** 2`` (both log-uniform)
4. clip and re-encode with a camera tone gamma ``g``: ``y = clip(N, 0, 1) ** (1 / g)``
5. quantise to 8 bits: ``round(255 * y) / 255``; optionally (probability ``p_jpeg``) JPEG-compress
   with quality ``q``.

The default ranges give mean brightness and noise comparable to LOL's low images (mean 0.03-0.10,
about 5-25% of the normal image, visibly noisy in flat regions).
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
    read_sigma_range: tuple[float, float] = (2e-4, 2e-3)  # sigma_r, log-uniform
    gamma_range: tuple[float, float] = (2.0, 2.6)  # g, uniform
    jpeg_probability: float = 0.0
    jpeg_quality_range: tuple[int, int] = (60, 95)

    def __post_init__(self) -> None:
        for name in ("exposure_range", "shot_range", "read_sigma_range", "gamma_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be 0 < low <= high, not {(lo, hi)}")
        if not self.exposure_range[1] <= 1:
            raise ValueError("exposure_range must stay within (0, 1]: the model darkens")
        if not 0 <= self.jpeg_probability <= 1:
            raise ValueError("jpeg_probability must be in [0, 1]")
        if not 1 <= self.jpeg_quality_range[0] <= self.jpeg_quality_range[1] <= 100:
            raise ValueError("jpeg_quality_range must be 1 <= low <= high <= 100")


@dataclass(frozen=True)
class DegradeParams:
    """One image's draw: the values of k, a, sigma_r, g and the JPEG quality (None: no JPEG)."""

    exposure: float
    shot: float
    read_sigma: float
    gamma: float
    jpeg_quality: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_params(rng: np.random.Generator, spec: DegradeSpec = DegradeSpec()) -> DegradeParams:
    """Draw one image's parameters from ``spec`` (always five draws, so streams stay aligned)."""
    k = _log_uniform(rng, *spec.exposure_range)
    a = _log_uniform(rng, *spec.shot_range)
    s = _log_uniform(rng, *spec.read_sigma_range)
    g = float(rng.uniform(*spec.gamma_range))
    use_jpeg = rng.uniform() < spec.jpeg_probability
    q = int(rng.integers(spec.jpeg_quality_range[0], spec.jpeg_quality_range[1] + 1))
    return DegradeParams(k, a, s, g, q if use_jpeg else None)


def degrade(x: np.ndarray, params: DegradeParams, rng: np.random.Generator) -> np.ndarray:
    """Steps 1-5 above: (H, W, 3) float in [0, 1] -> the low-light uint8 image (H, W, 3)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"degrade needs an (H, W, 3) RGB image, not shape {x.shape}")
    lin = np.clip(x, 0.0, 1.0) ** DISPLAY_GAMMA  # 1
    e = params.exposure * lin  # 2
    n = e + np.sqrt(params.shot * e + params.read_sigma**2) * rng.standard_normal(e.shape)  # 3
    y = np.clip(n, 0.0, 1.0) ** (1.0 / params.gamma)  # 4
    out = np.round(y * 255.0).astype(np.uint8)  # 5
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
    import os

    from PIL import Image, ImageOps

    from .clip import IMAGE_SUFFIXES
    from .errors import InputError, OutputExistsError

    source, out = Path(source), Path(out)
    if variants < 1:
        raise ValueError("variants must be at least 1")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) if source.is_dir() else []
    if not files:
        raise InputError(f"{source}: no images found (png, jpg, bmp, tif, webp) to degrade")
    low_dir, high_dir = out / "low", out / "high"
    for d in (low_dir, high_dir):
        if d.is_dir() and any(d.iterdir()) and not overwrite:
            raise OutputExistsError(f"{d}: not empty; pass --overwrite to replace its pairs, or choose another -o")
        d.mkdir(parents=True, exist_ok=True)

    def save(img: np.ndarray, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.part")
        Image.fromarray(img).save(tmp, format="PNG")
        os.replace(tmp, path)

    records = []
    for n, f in enumerate(files):
        rel = f.relative_to(source).as_posix()
        try:
            with Image.open(f) as im:
                high = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)
        except OSError as e:
            raise InputError(f"{f}: cannot read image ({e}); remove or replace it") from e
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
    tmp = out / ".pairs.json.part"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "pairs.json")
    return records
