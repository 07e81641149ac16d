"""Render ``dark_street.png``: a synthetic, under-exposed night street for docs, demos and smoke tests.

    python examples/make_example.py [--out PATH] [--seed N]

The scene is drawn from scratch with numpy (no photo goes in), so the project owns it outright.
It is first rendered as a normally exposed image, with lamps and lit windows far brighter than 1,
then "photographed" badly: low exposure, a shadow-crushing tone curve, shot and read noise, 8 bits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 600, 400
HORIZON = 0.52  # vanishing point height, as a fraction of the image height
EXPOSURE = 0.28  # fraction of a correct exposure that reaches the sensor
GAMMA = 1.6  # extra contrast in the shadows, like a cheap sensor's tone curve
READ_NOISE = 0.012
SHOT_NOISE = 0.02  # per-pixel std at signal 1, scaled by sqrt(signal) as photon noise is

Array = np.ndarray


def value_noise(h: int, w: int, cell: int, rng: np.random.Generator) -> Array:
    """Smooth noise in [0, 1]: random values on a coarse grid, smoothstep-interpolated."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.random((gh, gw))
    y, x = np.arange(h) / cell, np.arange(w) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = y - y0, x - x0
    fy, fx = (fy * fy * (3 - 2 * fy))[:, None], (fx * fx * (3 - 2 * fx))[None, :]
    a, b = grid[y0][:, x0], grid[y0][:, x0 + 1]
    c, d = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def fractal_noise(h: int, w: int, rng: np.random.Generator, cells: tuple[int, ...] = (64, 24, 8, 3)) -> Array:
    out = sum(value_noise(h, w, c, rng) / (i + 1) for i, c in enumerate(cells))
    return out / sum(1 / (i + 1) for i in range(len(cells)))


def cell_hash(i: Array, j: Array, salt: int) -> Array:
    """A uniform value in [0, 1) per integer cell (i, j); integer mixing, so identical on every platform."""
    u64 = np.uint64
    x = i.astype(np.int64).astype(u64) * u64(0x9E3779B1) + j.astype(np.int64).astype(u64) * u64(0x85EBCA77) + u64(salt)
    x ^= x >> u64(15)
    x *= u64(0x2C1B3C6D)
    x ^= x >> u64(12)
    return (x & u64(0xFFFF)).astype(np.float64) / 65536


def glow(yy: Array, xx: Array, cy: float, cx: float, radius: float) -> Array:
    """A lamp's halo: a sharp core plus a wide, faint falloff, as lens flare makes it."""
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / radius**2
    return np.exp(-r2 * 4) + 0.25 * np.exp(-r2 * 0.35)


def render_scene(rng: np.random.Generator) -> Array:
    """A correctly exposed linear RGB scene; light sources exceed 1."""
    h, w = HEIGHT, WIDTH
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    vy, vx = HORIZON * h, 0.5 * w
    img = np.zeros((h, w, 3))

    # Sky: deep blue overhead, warmed by the city's light pollution near the horizon.
    t = np.clip(yy / vy, 0, 1)[..., None]
    img[:] = (1 - t) * np.array([0.05, 0.08, 0.20]) + t * np.array([0.35, 0.25, 0.22])
    img += (fractal_noise(h, w, rng, (90, 40)) - 0.5)[..., None] * 0.08  # thin clouds

    # Far skyline around the vanishing point: blocky towers with a sparse grid of small windows.
    x, salt = 0, 100
    while x < w:
        bw = int(rng.integers(18, 45))
        top = vy - rng.integers(25, 110)
        shade = rng.uniform(0.10, 0.18)
        block = (xx >= x) & (xx < x + bw) & (yy >= top) & (yy < vy + 2)
        img[block] = [shade, shade * 0.95, shade * 1.1]
        win = block & ((yy - top) % 9 < 3) & ((xx - x) % 7 < 3)
        img[win & (cell_hash((yy - top) // 9, (xx - x) // 7, salt) < 0.15)] = [1.6, 1.3, 0.7]
        x, salt = x + bw, salt + 1

    # Road and pavements: everything below the horizon, in perspective.
    below = yy >= vy
    depth = np.where(below, (yy - vy) / (h - vy), 1.0)  # 0 at the horizon, 1 at the bottom edge
    half_road = 0.42 * w * depth
    road = below & (np.abs(xx - vx) < half_road)
    img[below] = [0.22, 0.21, 0.20]  # pavement
    img[road] = [0.13, 0.13, 0.14]  # asphalt
    # Dashed centre line: dashes equally long in world space, so their period is in 1/depth.
    dash = (np.abs(xx - vx) < 0.008 * w * depth + 0.3) & (np.sin(9.0 / np.maximum(depth, 1e-3)) > 0.2)
    img[below & dash] = [0.75, 0.72, 0.55]
    kerb = below & (np.abs(np.abs(xx - vx) - half_road) < 0.006 * w * depth + 0.4)
    img[kerb] = [0.45, 0.44, 0.42]

    # Facades on both sides. s = |x - vx| / facade offset is the perspective scale (1 / distance),
    # so a facade spans vy - s * height .. vy + s * (h - vy), and windows repeat evenly in 1/s.
    s = np.abs(xx - vx) / (0.55 * w)
    facade = (s > 0.06) & (yy > vy - s * 1.3 * h) & (yy < vy + s * (h - vy))
    along, up = 1.0 / np.maximum(s, 1e-3), (vy - yy) / np.maximum(s, 1e-3) / h
    col, row = np.floor(along * 2.5), np.floor(up * 5.0)
    in_win = (np.mod(along * 2.5, 1) < 0.6) & (np.mod(up * 5.0, 1) < 0.55) & (up > 0.05) & (s > 0.12)
    for side, base in ((-1, [0.30, 0.24, 0.20]), (1, [0.22, 0.24, 0.28])):
        mine = facade & (np.sign(xx - vx) == side)
        cell = cell_hash(col, row, side + 2)  # a window is lit or dark as a whole, not per pixel
        img[mine] = base
        img[mine & in_win] = np.array(base) * 0.3
        img[mine & in_win & (cell < 0.2)] = [2.2, 1.6, 0.8]  # tungsten
        img[mine & in_win & (cell >= 0.2) & (cell < 0.3)] = [1.1, 1.3, 1.7]  # a TV or LED

    # Street lamps along both kerbs: pole, bright head, halo and a pool of light on the ground.
    light = np.zeros((h, w))
    for depth_k in (0.95, 0.55, 0.33, 0.2):
        for side in (-1, 1):
            gx = vx + side * 0.47 * w * depth_k
            gy = vy + depth_k * (h - vy)
            head_y = gy - 0.9 * h * depth_k
            pole = (np.abs(xx - gx) < max(1.0, 3 * depth_k)) & (yy > head_y) & (yy < gy)
            img[pole] = [0.08, 0.08, 0.09]
            light += 3.0 * glow(yy, xx, head_y, gx - side * 6 * depth_k, 22 * depth_k + 3)
            pool = np.exp(-(((xx - gx + side * 0.1 * w * depth_k) / (0.18 * w * depth_k)) ** 2
                            + ((yy - gy) / (0.12 * h * depth_k + 2)) ** 2))
            img += (0.5 * pool * below)[..., None] * np.array([1.0, 0.8, 0.5])
    img += light[..., None] * np.array([1.0, 0.78, 0.45])  # sodium-orange lamps

    # Surface texture (grime, tarmac grain) so the enhancer has detail to recover.
    img *= (0.75 + 0.5 * fractal_noise(h, w, rng))[..., None]
    return img


def underexpose(scene: Array, rng: np.random.Generator) -> Array:
    """Simulate a bad night shot of ``scene``; returns sRGB-ish values in [0, 1]."""
    x = np.clip(scene, 0, None) ** GAMMA * EXPOSURE
    x = x + rng.standard_normal(x.shape) * np.sqrt(np.clip(x, 0, None)) * SHOT_NOISE
    x = x + rng.standard_normal(x.shape) * READ_NOISE
    return np.clip(x, 0, 1)


def make(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    dark = underexpose(render_scene(rng), rng)
    return Image.fromarray(np.round(dark * 255).astype(np.uint8))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render the synthetic low-light example image.")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "dark_street.png")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    img = make(args.seed)
    img.save(args.out, optimize=True)
    mean = np.asarray(img, dtype=np.float64).mean() / 255
    print(f"wrote {args.out} ({img.width}x{img.height}, mean {mean:.3f}, {args.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
