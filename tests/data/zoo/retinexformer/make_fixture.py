"""Make the Retinexformer parity fixtures with the authors' code (run in a scratch environment).

    python make_fixture.py /path/to/Retinexformer [--shared ../shared] [--out DIR] [--seed 1] [--scale 0.5]

The official network (``basicsr/models/archs/RetinexFormer_arch.py``, loaded by path so nothing else
of BasicSR is imported) gets deterministic random weights from ``tests/random_state.py``'s
``seeded_state`` (seeded by each key's name and shape, so lle's tests can put the same numbers into
lle's model). Each input PNG is read as the test script reads it (RGB, float32 / 255) and run through
the script's pipeline (``Enhancement/test_from_dataset.py``): reflection padding of the bottom and
right edges to a multiple of 4 when the size is not one, the network, the crop back (then the script
clamps to [0, 1]). Outputs are float32 (1, 3, H, W) ``<config>_<input>.npy``, before that clamp;
``keys.json`` has each config's official state-dict keys and shapes; a summary goes to stdout.
Needs torch, einops, numpy and Pillow; CPU only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
# name -> the official constructor's arguments; "lol-v1" is every released checkpoint's config
CONFIGS = {
    "lol-v1": {"n_feat": 40, "stage": 1, "num_blocks": [1, 2, 2]},
    "small": {"n_feat": 16, "stage": 2, "num_blocks": [1, 1, 1]},  # two stages, narrower heads
}
# config -> inputs (../shared/golden/inputs): 90x131 needs padding on both axes, 96x128 none
RUNS = {"lol-v1": ("lowlight_odd", "lowlight_a"), "small": ("lowlight_odd",)}
SEED = 1
SCALE = 0.5  # with seed 1, the released config's output is inside [0, 1] but at 0.06% of pixels (NOTES.md)
FACTOR = 4  # the test script's padding multiple


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_pipeline(model: torch.nn.Module, img: torch.Tensor) -> torch.Tensor:
    """The test script's steps around the network on a (1, 3, h, w) float32 input, up to its clamp:
    the script's result is ``torch.clamp(this, 0, 1)``, which is exact, so the fixtures keep the
    values before it (every pixel then checks the network, also those the clamp would hide)."""
    _, _, h, w = img.shape
    big_h, big_w = ((h + FACTOR) // FACTOR) * FACTOR, ((w + FACTOR) // FACTOR) * FACTOR
    padh = big_h - h if h % FACTOR != 0 else 0
    padw = big_w - w if w % FACTOR != 0 else 0
    x = F.pad(img, (0, padw, 0, padh), "reflect")
    with torch.inference_mode():
        restored = model(x)
    return restored[:, :, :h, :w]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("official", type=Path, help="a checkout of caiyuanhao1998/Retinexformer")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="lle's shared data folder")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--scale", type=float, default=SCALE)
    args = ap.parse_args()

    torch.set_num_threads(1)
    arch = _load("retinexformer_official_arch", args.official / "basicsr" / "models" / "archs" / "RetinexFormer_arch.py")
    seeded_state = _load("random_state", REPO / "tests" / "random_state.py").seeded_state
    keys: dict[str, dict[str, list[int]]] = {}
    report = {}
    for name, kwargs in CONFIGS.items():
        model = arch.RetinexFormer(in_channels=3, out_channels=3, **kwargs).eval()
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        keys[name] = {k: list(s) for k, s in shapes.items()}
        model.load_state_dict(seeded_state(shapes, seed=args.seed, scale=args.scale), strict=True)
        for img_name in RUNS[name]:
            rgb = np.asarray(Image.open(args.shared / "golden" / "inputs" / f"{img_name}.png").convert("RGB"))
            img = torch.from_numpy(np.float32(rgb) / 255.0).permute(2, 0, 1)[None]
            out = official_pipeline(model, img).numpy().astype(np.float32)
            np.save(args.out / f"{name}_{img_name}.npy", out)
            clamped = np.clip(out, 0, 1)
            report[f"{name}_{img_name}"] = {
                "shape": list(out.shape), "mean": round(float(clamped.mean()), 4), "std": round(float(clamped.std()), 4),
                "clamped_fraction": round(float(((out < 0) | (out > 1)).mean()), 4),
            }
    (args.out / "keys.json").write_text(json.dumps(keys, indent=1) + "\n")
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
