"""Reference NIQE values from BasicSR's own code, for tests/test_niqe.py.

    python bench/niqe_reference.py --basicsr BASICSR_CHECKOUT [--shared ../shared] [--out tests/data/niqe_reference.json]

Run it with a Python that is *not* lle's: a scratch environment outside the repository, so that the
reference comes from BasicSR's code and its dependencies alone. What tests/data/niqe_reference.json
was made with (December 2025):

    python3.11 -m venv /tmp/bsr
    /tmp/bsr/bin/pip install numpy==2.4.6 scipy==1.17.1 opencv-python-headless==5.1.0 torch==2.14.1 pillow==13.0.0
    git clone https://github.com/XPixelGroup/BasicSR /tmp/bsr/BasicSR
    git -C /tmp/bsr/BasicSR checkout 8d56e3a045f9fb3e1d8872f92ee4a4f07f886b0a   # v1.4.2
    /tmp/bsr/bin/python bench/niqe_reference.py --basicsr /tmp/bsr/BasicSR

Only ``basicsr/metrics/niqe.py`` and the helpers it imports (``metric_util``, ``utils/color_util``,
``utils/matlab_functions``, ``utils/registry``) are loaded, without running ``basicsr/__init__.py``,
which would import every architecture and dataset and their many dependencies.

Each image is decoded here with Pillow (EXIF orientation applied, converted to RGB) and handed to
``calculate_niqe(bgr, crop_border=0, input_order='HWC', convert_to='y')`` in OpenCV's BGR order, as
BasicSR's ``scripts/metrics/calculate_niqe.py`` does after ``cv2.imread``. The JSON records the
sha256 of the decoded RGB bytes: the test first checks that lle decodes the same pixels, so that a
decoder difference is never mistaken for a metric difference.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import platform
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "niqe_reference.json"
# the folders of ../shared/data the issue names: LOL eval15 (low and high), LIME, backlit, positives
SETS = ("lol_eval15/low", "lol_eval15/high", "lowlight_real/LIME", "backlit", "positives/Kodak24", "positives/CBSD68")
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def load_basicsr_niqe(checkout: Path):
    """BasicSR's ``calculate_niqe`` from a checkout, importing only the modules it needs."""
    pkg = checkout / "basicsr"
    if not (pkg / "metrics" / "niqe.py").is_file():
        raise SystemExit(f"{pkg / 'metrics' / 'niqe.py'}: not found; pass --basicsr a clone of XPixelGroup/BasicSR")
    # empty parent packages with the checkout's folders as their search path, so that
    # basicsr/__init__.py (which imports all of BasicSR) never runs
    for name, path in (("basicsr", pkg), ("basicsr.metrics", pkg / "metrics"), ("basicsr.utils", pkg / "utils")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules[name] = mod
    color = importlib.import_module("basicsr.utils.color_util")
    sys.modules["basicsr.utils"].bgr2ycbcr = color.bgr2ycbcr  # what metric_util imports from basicsr.utils
    return importlib.import_module("basicsr.metrics.niqe").calculate_niqe


def decode(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def git_commit(checkout: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--basicsr", type=Path, required=True, help="a clone of XPixelGroup/BasicSR (at the commit to reproduce)")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the shared folder with data/")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    calculate_niqe = load_basicsr_niqe(args.basicsr)
    import cv2
    import scipy
    import torch

    data = args.shared / "data"
    images: dict[str, dict] = {}
    t0 = time.time()
    for folder in SETS:
        files = sorted(p for p in (data / folder).iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
        for path in files:
            rgb = decode(path)
            start = time.time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # empty slices of flat blocks, as BasicSR's script does
                value = float(calculate_niqe(np.ascontiguousarray(rgb[..., ::-1]), 0, input_order="HWC", convert_to="y"))
            key = path.relative_to(data).as_posix()
            images[key] = {"niqe": value, "rgb_sha256": hashlib.sha256(rgb.tobytes()).hexdigest(), "shape": list(rgb.shape)}
            print(f"{key:60s} {value:10.6f}  ({time.time() - start:.1f} s)", flush=True)
    out = {
        "what": "BasicSR calculate_niqe(bgr, 0, input_order='HWC', convert_to='y') on the images of ../shared/data",
        "made_by": "bench/niqe_reference.py",
        "basicsr_commit": git_commit(args.basicsr),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
                     "opencv": cv2.__version__, "torch": torch.__version__, "pillow": Image.__version__},
        "decoder": "Pillow, ImageOps.exif_transpose, convert('RGB'); rgb_sha256 is of the decoded (H, W, 3) uint8 bytes",
        "seconds": round(time.time() - t0, 1),
        "images": images,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} ({len(images)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
