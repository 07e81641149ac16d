"""A contact sheet to look at a flow's samples: 4 LOL eval15 and 4 real low-light photos, tau 0.8 and 1.0.

    python bench/flow_sheet.py [--model NAME | --weights FILE.safetensors] [--out docs/flow_samples.png]
                               [--side 320] [--seed 0]

Each row is one photo: the input (brightened x4 only so that it can be seen), the tau-0 output, one
sample at tau 0.8 and one at tau 1.0 (same seed). Photos are downscaled to ``--side`` pixels on their
long side before sampling, so the sheet stays small enough to commit; the model card's figures are
measured at full size by bench/flow_quality.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.flow_quality import load  # noqa: E402
from lle_cli.imageio import read_image  # noqa: E402
from lle_cli.sampling import sample_array  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
LOL = ["1.png", "22.png", "111.png", "748.png"]
REAL = [("lowlight_real/LIME", "1.bmp"), ("lowlight_real/LIME", "3.bmp"), ("lowlight_real/LIME", "7.bmp"), ("lowlight_real/LIME", "9.bmp")]


def _small(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = side / max(h, w)
    size = (max(16, round(w * s / 16) * 16), max(16, round(h * s / 16) * 16))
    return np.asarray(Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS), np.float32) / 255


def _u8(x: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(np.nan_to_num(x), 0, 1) * 255 + 0.5).astype(np.uint8))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "flow_samples.png")
    ap.add_argument("--side", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.model is None and args.weights is None:
        from lle_cli.cli.sample import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
    model = load(args.model, args.weights)
    photos = [DATA / "lol_eval15" / "low" / n for n in LOL] + [DATA / d / n for d, n in REAL]
    rows = []
    for p in photos:
        rgb = _small(read_image(p).rgb, args.side)
        got = sample_array(model, rgb, n=1, taus=(0.0, 0.8, 1.0), seed=args.seed)
        by_tau = {s.tau: s.image for s in got.samples}
        rows.append([np.clip(rgb * 4, 0, 1), by_tau[0.0], by_tau[0.8], by_tau[1.0]])
    tw = max(r[0].shape[1] for r in rows)
    pad, head = 4, 16
    tops = np.cumsum([head] + [r[0].shape[0] + pad for r in rows])
    sheet = Image.new("RGB", (pad + 4 * (tw + pad), int(tops[-1])), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for j, title in enumerate(["input x4", "tau 0", "tau 0.8", "tau 1.0"]):
        draw.text((pad + j * (tw + pad) + 2, 2), title, fill=(230, 230, 230))
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            sheet.paste(_u8(img), (pad + j * (tw + pad), int(tops[i])))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
