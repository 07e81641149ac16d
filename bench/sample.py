"""Cost of ``lle sample --n N`` against N separate ``lle enhance`` runs of an LLFlow model, on the CPU.

    python bench/sample.py [--model llflow.lol] [--n 10] [--sizes 600x400,2048x1536] [--threads T]
                           [--weights FILE] [--json PATH]

Target: drawing 10 samples costs at most 35% of ten enhance runs, because the encoder runs once per
image and the conditioning-only parts of the flow run once per decode batch. "Ten enhance runs" is
ten times one timed ``enhance`` (the runs are independent and identical in cost). Peak RSS is
measured separately for the enhance and the sample phase (Linux resets the high-water mark).

Weights: ``--weights`` if given; otherwise random, with Glow's data-dependent ActNorm initialisation
on a crop of the input so activations stay in a trained model's range (no inf/NaN slow paths). Run
time does not depend on the weight values.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark the checkout this script sits in, installed or not

from bench.enhance import environment, parse_sizes, peak_rss_mib, reset_peak_rss, write_results  # noqa: E402
from lle_cli.models import build_model, load_state_strict  # noqa: E402
from lle_cli.registry import get_registry  # noqa: E402
from lle_cli.runner import LoadedModel  # noqa: E402
from lle_cli.sampling import sample_array  # noqa: E402
from lle_cli.weights import load_upstream_checkpoint  # noqa: E402

DEFAULT_JSON = ROOT / "bench" / "results" / "sample.json"
DEFAULT_SIZES = "600x400,2048x1536"
TARGET = 0.35


def load(name: str, weights: Path | None, init_rgb: np.ndarray) -> LoadedModel:
    entry = get_registry().resolve(name)
    module = build_model(entry.family, entry.architecture)
    if weights is not None:
        load_state_strict(module, load_upstream_checkpoint(weights), source=str(weights))
        source = str(weights)
    else:
        crop = torch.from_numpy(init_rgb[:160, :160]).permute(2, 0, 1)[None].contiguous()
        module.initialize_actnorms(crop, (crop * 4).clamp(0, 1))
        source = "random init + data-dependent ActNorm init"
    return LoadedModel(entry, module.eval(), torch.device("cpu"), torch.float32, source)


def low_light(width: int, height: int) -> np.ndarray:
    """A dark test image: smooth random shading plus noise, like an under-exposed photo."""
    rng = np.random.default_rng(0)
    coarse = rng.random((height // 32 + 2, width // 32 + 2, 3), dtype=np.float32)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(height, width), mode="bilinear")
    img = smooth[0].permute(1, 2, 0).numpy() * 0.2 + rng.random((height, width, 3), dtype=np.float32) * 0.03
    return np.ascontiguousarray(np.clip(img, 0, 1))


def measure(model: LoadedModel, width: int, height: int, n: int) -> dict[str, Any]:
    rgb = low_light(width, height)
    scope = "run" if reset_peak_rss() else "process"
    t0 = time.perf_counter()
    out = model.enhance(rgb)
    t_enh = time.perf_counter() - t0
    rss_enh = peak_rss_mib()
    assert out.shape == rgb.shape
    reset_peak_rss()
    t0 = time.perf_counter()
    drawn = sample_array(model, rgb, n=n, taus=(1.0,), seed=0)
    t_smp = time.perf_counter() - t0
    rss_smp = peak_rss_mib()
    ratio = t_smp / (n * t_enh)
    return {
        "model": model.name,
        "weights": model.weights_source,
        "size": f"{width}x{height}",
        "n": n,
        "enhance_s": round(t_enh, 3),
        "n_enhance_s": round(n * t_enh, 3),
        "sample_s": round(t_smp, 3),
        "ratio": round(ratio, 4),
        "target": TARGET,
        "meets_target": ratio <= TARGET,
        "decode_batch": drawn.batch_size,
        "bad_samples": sum(s.bad for s in drawn.samples),
        "peak_rss_enhance_mib": round(rss_enh, 1),
        "peak_rss_sample_mib": round(rss_smp, 1),
        "peak_rss_scope": scope,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [("size", "size"), ("enhance_s", "enhance s"), ("n_enhance_s", "n x enhance s"), ("sample_s", "sample s"),
            ("ratio", "ratio"), ("meets_target", f"<= {TARGET:.0%}"), ("decode_batch", "batch"),
            ("peak_rss_enhance_mib", "RSS enhance MiB"), ("peak_rss_sample_mib", "RSS sample MiB")]
    cells = [[str(r[k]) for k, _ in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
    for line in [[h for _, h in cols], ["-" * w for w in widths], *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llflow.lol", help="an LLFlow model name (default llflow.lol, the standard size)")
    p.add_argument("--weights", type=Path, default=None, help="weights file (default: random, see the docstring)")
    p.add_argument("--n", type=int, default=10, help="samples drawn (default 10)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES, help=f"comma-separated WIDTHxHEIGHT (default {DEFAULT_SIZES})")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)})")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    env = environment()
    print(f"torch {env['torch']}, {env['threads']} threads, {env['cpu']}", file=sys.stderr)
    model = load(args.model, args.weights, low_light(320, 240))
    print(f"{model.name} ({model.weights_source})", file=sys.stderr)
    model.enhance(low_light(64, 48))  # warm-up: first-call allocations and kernel selection
    rows = []
    for w, h in args.sizes:
        print(f"{w}x{h}: enhance once, then sample n={args.n} ...", file=sys.stderr)
        rows.append(measure(model, w, h, args.n))
    print_table(rows)
    write_results(args.json, env, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
