"""How good are an LLFlow model's samples? The figures of the flow-weights issue, on images never trained on.

    python bench/flow_quality.py [--model llflow.lle-synth-rqs | --weights FILE.safetensors]
                                 [--images N] [--lime N] [--draws 10] [--threads T] [--json PATH]

On LOL eval15 (``../shared/data/lol_eval15``, 600x400, never trained on), per image, from one encoder
pass: the tau-0 output, ``--draws`` tau-1 samples (base seed 0) and the tau-0 outputs at z-offsets
-0.4 .. 0.4. Reported:

* PSNR / SSIM (``--protocol plain``: 8-bit, no alignment) of the tau-0 output and of the first three
  tau-1 samples, and the same under ``--protocol llflow`` (brightness-aligned, the LLFlow paper's);
* the block-artefact ratio (``lle_cli.metrics.block_ratio``: mean |luma step| across the 8-pixel grid
  lines over the mean off them; LOL's normal-light images score about 1.05) of the tau-1 samples;
* diversity: the per-pixel standard deviation across the tau-1 samples (8-bit levels, mean over
  pixels) and the spread (max - min) of their mean brightness;
* paper Fig. 6: whether the tau-0 brightness is strictly monotonic in the z-offset (and which way);
* the fraction of tau-1 samples with any Inf/NaN, and of "error pixels" (non-finite or outside
  [-0.5, 1.5]), as the robust-flow paper counts them.

On LIME (``../shared/data/lowlight_real/LIME``, no references): the block ratio, non-finite and
error-pixel rates of the same draws. ``--weights`` evaluates a training checkpoint or output (its
architecture is read from the file's ``lle`` metadata).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark the checkout this script sits in, installed or not

from bench.enhance import environment, write_results  # noqa: E402
from lle_cli import api  # noqa: E402
from lle_cli.evaluate import measure  # noqa: E402
from lle_cli.imageio import read_image  # noqa: E402
from lle_cli.metrics import block_ratio  # noqa: E402
from lle_cli.models import build_model, load_state_strict  # noqa: E402
from lle_cli.registry import get_registry  # noqa: E402
from lle_cli.runner import LoadedModel  # noqa: E402
from lle_cli.sampling import sample_array  # noqa: E402
from lle_cli.weights import load_safetensors  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DEFAULT_JSON = ROOT / "bench" / "results" / "flow_quality.json"
OFFSETS = (-0.4, -0.2, 0.0, 0.2, 0.4)


def load(name: str | None, weights: Path | None) -> LoadedModel:
    if weights is None:
        return api.load_model(name, device="cpu")
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lle") or "{}")
    training = meta.get("training", {})
    arch = training.get("architecture") or training.get("config", {}).get("architecture")
    if not arch:
        raise SystemExit(f"{weights}: no architecture in its lle metadata; pass --model for a registered one")
    entry = get_registry().resolve(name or "llflow.lle-synth-rqs")
    module = build_model("llflow", arch)
    load_state_strict(module, load_safetensors(weights), source=str(weights))
    return LoadedModel(entry, module.eval(), torch.device("cpu"), torch.float32, str(weights))


def _u8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _error_pixels(x: np.ndarray) -> float:
    return float(np.mean(~np.isfinite(x) | (x < -0.5) | (x > 1.5)))


def one_image(model: LoadedModel, rgb: np.ndarray, draws: int, ref: np.ndarray | None) -> dict[str, Any]:
    got = sample_array(model, rgb, n=draws, taus=(0.0, 1.0), offsets=(0.0,), seed=0)
    tau0 = next(s.image for s in got.samples if s.tau == 0)
    tau1 = [s.image for s in got.samples if s.tau == 1]
    finite = [np.isfinite(s).all() for s in tau1]
    good = [s for s, ok in zip(tau1, finite) if ok]
    row: dict[str, Any] = {
        "nonfinite": 1 - float(np.mean(finite)),
        "error_pixels": float(np.mean([_error_pixels(s) for s in tau1])),
        "block_tau1": float(np.mean([block_ratio(_u8(s)) for s in good])) if good else math.nan,
        "block_tau0": block_ratio(_u8(tau0)),
        "pixel_std": float(np.std(np.stack([_u8(s).astype(np.float32) for s in good]), axis=0).mean()) if len(good) > 1 else math.nan,
        "brightness_spread": float(np.ptp([np.clip(s, 0, 1).mean() for s in good])) if good else math.nan,
    }
    if ref is not None:
        m0, _ = measure(tau0, ref, "plain")
        l0, _ = measure(tau0, ref, "llflow")
        m1 = [measure(s, ref, "plain")[0] for s in good[:3]]
        l1 = [measure(s, ref, "llflow")[0] for s in good[:3]]
        row.update({
            "psnr_tau0": m0["psnr"], "ssim_tau0": m0["ssim"],
            "psnr_tau0_llflow": l0["psnr_aligned"], "ssim_tau0_llflow": l0["ssim_grey_aligned"],
            "psnr_tau1": float(np.mean([m["psnr"] for m in m1])), "ssim_tau1": float(np.mean([m["ssim"] for m in m1])),
            "psnr_tau1_llflow": float(np.mean([m["psnr_aligned"] for m in l1])),
        })
        offs = sample_array(model, rgb, n=1, taus=(0.0,), offsets=OFFSETS, seed=0)
        b = [s.stats.mean_brightness for s in sorted(offs.samples, key=lambda s: s.offset)]
        steps = np.sign(np.diff(b))
        row["offset_direction"] = int(steps[0]) if abs(steps.sum()) == len(OFFSETS) - 1 else 0
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r if k not in ("image", "offset_direction", "seconds")})
    out = {k: float(np.nanmean([r[k] for r in rows if k in r])) for k in keys}
    dirs = [r["offset_direction"] for r in rows if "offset_direction" in r]
    if dirs:
        out["offset_monotonic_up"] = sum(d == 1 for d in dirs)
        out["offset_monotonic_down"] = sum(d == -1 for d in dirs)
        out["images"] = len(dirs)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="registered LLFlow model (default: lle sample's default)")
    ap.add_argument("--weights", type=Path, default=None, help="an LLFlow .safetensors written by lle train llflow")
    ap.add_argument("--images", type=int, default=15, help="LOL eval15 images (first N, sorted)")
    ap.add_argument("--lime", type=int, default=9, help="LIME images (0: skip)")
    ap.add_argument("--draws", type=int, default=10, help="tau-1 samples per image")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None and args.weights is None:
        from lle_cli.cli.sample import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
    model = load(args.model, args.weights)
    t0 = time.perf_counter()
    lol, lime = [], []
    for f in sorted((SHARED / "lol_eval15" / "low").glob("*.png"))[: args.images]:
        t = time.perf_counter()
        rgb = read_image(f).rgb
        ref = np.asarray(read_image(SHARED / "lol_eval15" / "high" / f.name).rgb * 255 + 0.5, dtype=np.uint8)
        row = {"image": f.name, **one_image(model, rgb, args.draws, ref), "seconds": round(time.perf_counter() - t, 2)}
        lol.append(row)
        print(f"LOL {f.name}: tau0 {row['psnr_tau0']:.2f} dB, tau1 {row['psnr_tau1']:.2f} dB, block {row['block_tau1']:.3f}, "
              f"std {row['pixel_std']:.1f}, offset {row['offset_direction']:+d}", file=sys.stderr)
    for f in sorted((SHARED / "lowlight_real" / "LIME").iterdir())[: args.lime]:
        row = {"image": f.name, **one_image(model, read_image(f).rgb, args.draws, None)}
        lime.append(row)
        print(f"LIME {f.name}: block {row['block_tau1']:.3f}, non-finite {row['nonfinite']:.0%}", file=sys.stderr)
    result = {
        "model": model.name if args.weights is None else str(args.weights),
        "weights": model.weights_source,
        "draws": args.draws,
        "lol_eval15": summarise(lol),
        "lime": summarise(lime) if lime else None,
        "per_image": {"lol_eval15": lol, "lime": lime},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    s = result["lol_eval15"]
    print(f"\n{'figure':<34}{'LOL eval15':>12}{'LIME':>10}")
    rows = [("PSNR tau 0 (plain), dB", "psnr_tau0"), ("SSIM tau 0 (plain)", "ssim_tau0"),
            ("PSNR tau 1 (plain, 3 samples), dB", "psnr_tau1"), ("SSIM tau 1 (plain)", "ssim_tau1"),
            ("PSNR tau 0 (llflow protocol), dB", "psnr_tau0_llflow"), ("SSIM tau 0 (llflow protocol)", "ssim_tau0_llflow"),
            ("PSNR tau 1 (llflow protocol), dB", "psnr_tau1_llflow"), ("block ratio, tau 1", "block_tau1"),
            ("block ratio, tau 0", "block_tau0"), ("pixel std across samples", "pixel_std"),
            ("brightness spread of samples", "brightness_spread"), ("non-finite samples", "nonfinite"),
            ("error pixels", "error_pixels")]
    for label, key in rows:
        lime_v = result["lime"].get(key) if result["lime"] else None
        print(f"{label:<34}{s.get(key, math.nan):>12.4g}{(lime_v if lime_v is not None else math.nan):>10.4g}")
    print(f"{'z-offset monotonic (up/down/of)':<34}{s['offset_monotonic_up']:>4}/{s['offset_monotonic_down']}/{s['images']}")
    write_results(args.json, environment(model=result["model"], weights=result["weights"]), [result])
    return 0


if __name__ == "__main__":
    sys.exit(main())
