"""Which model should `lle enhance photo.jpg` use? Candidates measured on LOL and on real photos.

    python bench/default_choice.py [--models NAME ...] [--weights NAME=FILE ...] [--sheet docs/default_choice.png]

A default must do well on what users bring, not only on LOL. For each candidate (weights embedded, or
the authors' file in ../shared/upstream/weights, or ``--weights NAME=FILE``) this measures

* LOL eval15 PSNR / SSIM (``lle eval``'s plain protocol, 8-bit outputs against the high images);
* on the real low-light and backlit photos (LIME 9, backlit 6):
  - ``clip_new``: the fraction of pixels that the output clips (a channel at 254 or more of 255) and
    the input did not: blown highlights the model created;
  - ``cast``: the colour cast the model adds to neutral areas. Neutral pixels are those of the input
    with chroma (max - min) / max below 0.12 and max in [0.1, 0.95]; their mean colour, divided by its
    own mean, is compared between output and input; ``cast`` is the largest channel difference (0.05
    = a 5 % tint);
  - ``niqe``: BasicSR's NIQE of the output (lower is more natural);
  - ``mean``: the output's mean brightness (a default that leaves a dark photo dark has not helped);
* on well-lit photos (Kodak24, never trained on): ``keep_psnr``, the PSNR of the output against the
  input (a photo that needs nothing should come out nearly unchanged) and its ``clip_new``.

With ``--sheet`` it writes a contact sheet of each model's outputs on a few photos, to look at.
JSON: bench/results/default_choice.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from zoo import DATA, LOL_HIGH, LOL_LOW, REAL_SETS, upstream_by_sha256, weights_for, write_json  # noqa: E402

from lle_cli import api  # noqa: E402
from lle_cli.evaluate import evaluate_model  # noqa: E402
from lle_cli.formats import list_image_files  # noqa: E402
from lle_cli.imageio import read_image  # noqa: E402
from lle_cli.metrics import niqe  # noqa: E402
from lle_cli.registry import get_registry  # noqa: E402

KEEP_SET = DATA / "positives" / "Kodak24"
DEFAULT_JSON = ROOT / "bench" / "results" / "default_choice.json"
CANDIDATES = ["zero-dce.lle-sice", "zero-dce.official", "zero-dce-pp.official", "scl-lle.official", "sci.medium",
              "sci.easy", "ruas.lol", "pairlie.lol", "iat.lol-v1", "iat.exposure", "uretinex.lol"]
SHEET_IMAGES = [DATA / "lowlight_real" / "LIME" / "1.bmp", DATA / "lowlight_real" / "LIME" / "10.bmp",
                DATA / "backlit" / "110_51093502029_o.jpg", DATA / "backlit" / "pexels-daniel-torobekov-5320051.jpg", KEEP_SET / "kodim05.png", LOL_LOW / "22.png"]
CLIP_LEVEL = 254 / 255


def to8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def clip_new(inp: np.ndarray, out: np.ndarray) -> float:
    """Share of pixels clipped by the output (a channel >= 254/255) that were not clipped in the input."""
    return float(((out.max(axis=2) >= CLIP_LEVEL) & (inp.max(axis=2) < CLIP_LEVEL)).mean())


def cast(inp: np.ndarray, out: np.ndarray) -> float | None:
    """Largest per-channel change of the normalised mean colour of the input's neutral pixels."""
    mx, mn = inp.max(axis=2), inp.min(axis=2)
    neutral = ((mx - mn) < 0.12 * np.maximum(mx, 1e-6)) & (mx > 0.1) & (mx < 0.95)
    if neutral.sum() < 500:
        return None
    a, b = inp[neutral].mean(axis=0), out[neutral].mean(axis=0)
    return float(np.abs(b / max(b.mean(), 1e-6) - a / max(a.mean(), 1e-6)).max())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((to8(a).astype(np.float64) - to8(b).astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / mse) if mse > 0 else math.inf


def photos_metrics(model: Any, folder: Path) -> dict[str, Any]:
    rows = {}
    for p in list_image_files(folder):
        inp = read_image(p).rgb.astype(np.float32)
        out = model.enhance(inp)
        q = to8(out)
        rows[p.name] = {"clip_new": clip_new(inp, q / 255.0), "cast": cast(inp, q / 255.0), "niqe": niqe(q),
                        "mean": float(q.mean() / 255.0), "input_mean": float(inp.mean()), "keep_psnr": psnr(inp, out)}
    return rows


def _mean(rows: dict[str, Any], key: str) -> float | None:
    vals = [r[key] for r in rows.values() if r.get(key) is not None and math.isfinite(r[key])]
    return round(statistics.fmean(vals), 5) if vals else None


def measure(name: str, weights: Path | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = api.load_model(name, weights=weights, device="cpu", precision="fp32", offline=True)
    lol = evaluate_model(model, LOL_LOW, LOL_HIGH, "plain")
    real: dict[str, Any] = {}
    for key, folder in REAL_SETS.items():
        real.update({f"{key}/{k}": v for k, v in photos_metrics(model, folder).items()})
    keep = photos_metrics(model, KEEP_SET)
    return {
        "lol_psnr": round(lol.mean["psnr"], 4), "lol_ssim": round(lol.mean["ssim"], 4),
        "real_clip_new": _mean(real, "clip_new"), "real_cast": _mean(real, "cast"), "real_niqe": _mean(real, "niqe"),
        "real_mean": _mean(real, "mean"), "keep_psnr": _mean(keep, "keep_psnr"), "keep_clip_new": _mean(keep, "clip_new"),
        "keep_cast": _mean(keep, "cast"), "images_real": real, "images_keep": keep, "seconds": round(time.perf_counter() - t0, 1),
    }


def contact_sheet(models: dict[str, Any], path: Path, width: int = 200) -> None:
    """Rows: the input, then each model; columns: SHEET_IMAGES, each scaled to ``width`` px wide."""
    from PIL import Image, ImageDraw

    label_w = 150
    tiles = []
    for p in SHEET_IMAGES:
        rgb = read_image(p).rgb
        h = round(rgb.shape[0] * width / rgb.shape[1])
        tiles.append((p, rgb, h))
    row_h = max(h for *_, h in tiles)
    sheet = Image.new("RGB", (label_w + width * len(tiles), row_h * (len(models) + 1)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, model) in enumerate([("input", None), *models.items()]):
        draw.text((4, r * row_h + row_h // 2 - 6), name, fill="black")
        for c, (p, rgb, h) in enumerate(tiles):
            out = rgb if model is None else to8(model.enhance(rgb.astype(np.float32)))
            if out.dtype != np.uint8:
                out = to8(out)
            im = Image.fromarray(out).resize((width, h), Image.Resampling.LANCZOS)
            sheet.paste(im, (label_w + c * width, r * row_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=CANDIDATES)
    ap.add_argument("--weights", nargs="*", default=[], help="NAME=FILE: weights for a candidate (e.g. a new training run)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--sheet", type=Path, help="write a contact sheet PNG here")
    ap.add_argument("--sheet-models", nargs="*", help="models on the sheet (default: all measured)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    given = dict(w.split("=", 1) for w in args.weights)
    reg = get_registry()
    upstream = upstream_by_sha256()
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    loaded: dict[str, Any] = {}
    for name in args.models:
        label = name
        if name in given:
            weights: Path | None = Path(given[name])
        else:
            weights, _, why = weights_for(reg.resolve(name), upstream)
            if why:
                print(f"skip {name}: {why}", flush=True)
                continue
        print(f"measuring {label}", flush=True)
        row = measure(name, weights)
        row["weights"] = str(weights) if weights else "embedded"
        results[label] = row
        write_json(args.json, results)
        loaded[label] = (name, weights)
    head = f"{'model':22s} {'LOL PSNR':>8s} {'SSIM':>6s} {'clip new':>8s} {'cast':>6s} {'NIQE':>6s} {'mean':>5s} {'keep PSNR':>9s} {'keep clip':>9s}"
    print(head)
    print("-" * len(head))

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for name, r in results.items():
        print(f"{name:22s} {f(r['lol_psnr'], '.2f'):>8s} {f(r['lol_ssim'], '.3f'):>6s} {f(r['real_clip_new'], '.4f'):>8s} "
              f"{f(r['real_cast'], '.3f'):>6s} {f(r['real_niqe'], '.2f'):>6s} {f(r['real_mean'], '.2f'):>5s} "
              f"{f(r['keep_psnr'], '.2f'):>9s} {f(r['keep_clip_new'], '.4f'):>9s}")
    if args.sheet:
        names = args.sheet_models or list(loaded)
        models = {n: api.load_model(loaded[n][0], weights=loaded[n][1], device="cpu", precision="fp32", offline=True)
                  for n in names if n in loaded}
        contact_sheet(models, args.sheet)
        print(f"contact sheet: {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
