"""Make the HVI-CIDNet parity fixtures with the authors' code (run in a scratch environment, not by the tests).

    python make_fixture.py /path/to/HVI-CIDNet [--out DIR] [--scale S] [--seed N] [--explore]

The official ``net.CIDNet.CIDNet`` (default config, as the hub's config.json) is filled with
``tests/random_state.py``'s ``seeded_state`` over its own state-dict keys and shapes, then run as the
authors' eval.py runs a folder of arbitrary-size images (its SICE/unpaired path, ``norm_size=False``):
``SICEDatasetFromFolderEval`` with ``ToTensor`` reads the PNG (PIL RGB, /255) and reflect-pads the bottom
and right to a multiple of 8, eval()'s ``trans`` flags are set for the dataset, ``model(input ** gamma)``,
``clamp(0, 1)``, crop to the input's size. Written to ``--out`` (default: beside this script):
``<input>_<config>.npy`` (float32, NCHW), ``keys.json`` (the official state-dict keys and shapes).
``--explore`` prints output statistics for a few scales instead (to pick one that saturates little).
Needs torch, torchvision, einops, huggingface_hub and PIL (what the authors' modules import).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO_TESTS = HERE.parents[2]  # tests/
SHARED_INPUTS = REPO_TESTS.parent.parent / "shared" / "golden" / "inputs"
SEED = 7  # its trans.density_k is 0.116 (> 0, like the released models' k)
SCALE = 0.9  # the largest of --explore's steps that leaves almost nothing at 1 (0.3%); 1.0 clips 7%
# name -> (eval.py flags as eval() sets them on model.trans, gamma, inputs)
CONFIGS = {
    # eval.py --lol: trans.gated = True (saturation * alpha_s, RGB_HVI's default 1.3)
    "lolv1": ({"gated": True}, 1.0, ("lowlight_odd", "lowlight_a")),
    # eval.py --lol_v2_real --best_PSNR: trans.gated2 = True, trans.alpha = 0.8
    "lolv2_real_best_psnr": ({"gated2": True, "alpha": 0.8}, 1.0, ("lowlight_odd",)),
    # eval.py --unpaired --alpha 0.9 --gamma 0.9 (the README's example)
    "unpaired_a0p9_g0p9": ({"gated2": True, "alpha": 0.9}, 0.9, ("lowlight_odd",)),
}


def _seeded_state():
    spec = importlib.util.spec_from_file_location("lle_random_state", REPO_TESTS / "random_state.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.seeded_state


def _official_model(official: Path, seed: int, scale: float) -> torch.nn.Module:
    from net.CIDNet import CIDNet

    model = CIDNet()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(_seeded_state()(shapes, seed=seed, scale=scale), strict=True)
    return model.eval()


def _run(model: torch.nn.Module, image: Path, flags: dict, gamma: float) -> np.ndarray:
    """eval.py's loop for one image (CPU instead of .cuda(); the same float32 operations)."""
    from data.eval_sets import SICEDatasetFromFolderEval
    from torchvision.transforms import ToTensor

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(image, tmp)
        dataset = SICEDatasetFromFolderEval(tmp, transform=ToTensor())
        x, _, h, w = dataset[0]
    model.trans.gated, model.trans.gated2, model.trans.alpha = False, False, 1.0
    for k, v in flags.items():
        setattr(model.trans, k, v)
    with torch.no_grad():
        out = model(x.unsqueeze(0) ** gamma)
    out = torch.clamp(out, 0, 1)[:, :, :h, :w]
    return out.numpy().astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("official", type=Path, help="checkout of github.com/Fediory/HVI-CIDNet")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--inputs", type=Path, default=SHARED_INPUTS)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--scale", type=float, default=SCALE)
    ap.add_argument("--explore", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(args.official.resolve()))
    torch.set_num_threads(1)  # one thread: the same summation order on every machine

    if args.explore:
        for scale in (0.5, 0.7, 0.8, 0.9, 1.0, 1.5):
            model = _official_model(args.official, args.seed, scale)
            for name, (flags, gamma, imgs) in CONFIGS.items():
                y = _run(model, args.inputs / f"{imgs[0]}.png", flags, gamma)
                print(f"scale {scale} {name}: mean {y.mean():.3f} std {y.std():.3f} "
                      f"at 0 {(y <= 0).mean():.3f} at 1 {(y >= 1).mean():.3f}")
        return

    model = _official_model(args.official, args.seed, args.scale)
    args.out.mkdir(parents=True, exist_ok=True)
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    (args.out / "keys.json").write_text(json.dumps(keys, indent=1) + "\n")
    for name, (flags, gamma, imgs) in CONFIGS.items():
        for img in imgs:
            y = _run(model, args.inputs / f"{img}.png", flags, gamma)
            np.save(args.out / f"{img}_{name}.npy", y)
            print(f"{img}_{name}.npy {y.shape} mean {y.mean():.4f} std {y.std():.4f} "
                  f"at 0 {(y <= 0).mean():.3f} at 1 {(y >= 1).mean():.3f}")
    print(f"torch {torch.__version__}, density_k {model.trans.density_k.item():.6f}")


if __name__ == "__main__":
    main()
