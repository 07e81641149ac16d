"""bf16 on the CPU, per family: how much faster, and how many 8-bit levels it moves the output.

    python bench/precision.py [--families F ...] [--sizes 600x400,...] [--repeats N] [--threads T] [--json PATH]

``--precision auto`` may pick bf16 on a CPU only where this measures it worth it (see
``lle_cli.device``): faster than float32 and within one 8-bit level of float32's output on 99.9 %
of the pixels. For each family (one model each, as ``bench/enhance.py`` picks them; real weights
where this machine has them) and size, on a real low-light photo (LOL eval15 ``1.png``, LIME
``1.bmp`` for the larger sizes, resized), it runs the untiled network three ways and alternates them:

* **fp32**: ``LoadedModel.enhance_tensor`` in float32, the reference;
* **autocast**: the same under ``torch.autocast("cpu", torch.bfloat16)``: weights stay float32,
  convolutions and matrix products run in bf16, reductions and normalisations in float32;
* **cast**: the module and input cast to bf16 (what ``--precision bf16`` loads on a CPU).

``ratio`` is the bf16 median over fp32's (below 1: faster). ``levels`` compares the outputs saved as
8-bit (round(255 x)): the largest difference, and ``within1`` the share of pixels whose three
channels are all within one level. ``finite`` is False when bf16 produced NaN/Inf (LLFlow's inverse
flow is the one to watch). ``auto`` says whether the policy's two conditions hold. The CPU's bf16
support (AVX512-BF16 / AMX) is recorded; without it bf16 is emulated and slow.
"""

from __future__ import annotations

import argparse
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

from enhance import environment, load_for_bench, parse_sizes, pick_entry, write_results  # noqa: E402

from lle_cli.device import AUTO_BF16_MAX_RATIO, AUTO_BF16_WITHIN1, cpu_has_native_bf16  # noqa: E402
from lle_cli.export import check_image  # noqa: E402
from lle_cli.imageio import read_image  # noqa: E402
from lle_cli.models import FAMILIES  # noqa: E402
from lle_cli.registry import get_registry  # noqa: E402
from lle_cli.runner import LoadedModel  # noqa: E402

# tracked (not under bench/results/): tests/test_precision.py holds the families' auto_cpu_bf16 flags to it
DEFAULT_JSON = ROOT / "bench" / "measured" / "precision.json"
DATA = ROOT.parent / "shared" / "data"
PHOTOS = [DATA / "lol_eval15" / "low" / "1.png", DATA / "lowlight_real" / "LIME" / "1.bmp"]
PREFERRED = {"llflow": "llflow.lle-synth-rqs"}  # real weights with the spline couplings


def photo(width: int, height: int) -> torch.Tensor:
    """(1, 3, H, W) float32: a real low-light photo resized to the size (a synthetic one without ../shared)."""
    from PIL import Image

    src = PHOTOS[0] if width * height <= 600 * 400 else PHOTOS[1]
    if not src.is_file():
        return check_image(height, width)
    im = Image.fromarray(_to8(np.asarray(read_image(src).rgb, dtype=np.float32)))
    arr = np.asarray(im.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def _to8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def model_for(family: str) -> LoadedModel:
    """The family's model with real weights where this machine has them: embedded, the authors' file,
    or several authors' files imported into a private cache (URetinex-Net); random weights otherwise
    (the JSON says which)."""
    reg = get_registry()
    name = PREFERRED.get(family)
    entry = reg.models[name] if name in reg.models else pick_entry(family)
    model = load_for_bench(entry)
    if model.weights_source == "random init" and entry.components:
        from zoo import upstream_by_sha256, weights_for

        _, source, why = weights_for(entry, upstream_by_sha256())
        if why is None:
            from lle_cli import api

            loaded = api.load_model(entry.name, device="cpu", precision="fp32", offline=True, tile=0)
            model = LoadedModel(entry, loaded.module, loaded.device, torch.float32, source, tile=0)
    from lle_cli._cpu import keep_freed_memory, prepare_for_inference

    keep_freed_memory()  # as the lle command runs a model: channels-last where the family asks for it
    prepare_for_inference(model.module, model.spec.channels_last, model.device)
    return model


def cast_copy(model: LoadedModel) -> LoadedModel:
    import copy

    module = copy.deepcopy(model.module).to(torch.bfloat16)
    return LoadedModel(model.entry, module, model.device, torch.bfloat16, model.weights_source, tile=0)


def level_stats(ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    a, b = _to8(ref).astype(np.int16), _to8(out).astype(np.int16)
    d = np.abs(a - b)  # (1, 3, H, W)
    per_pixel = d.max(axis=1)
    return {"max_levels": int(d.max()), "within1": round(float((per_pixel <= 1).mean()), 5),
            "max_abs_diff": round(float(np.abs(ref.astype(np.float64) - out).max()), 5)}


def measure(family: str, size: tuple[int, int], repeats: int) -> dict[str, Any]:
    model = model_for(family)
    model.tile = 0
    x = photo(*size)
    bf = cast_copy(model)

    def fp32() -> np.ndarray:
        return model.enhance_tensor(x).numpy()

    def autocast() -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.enhance_tensor(x).numpy()

    def cast() -> np.ndarray:
        return bf.enhance_tensor(x).numpy()

    runs = {"fp32": fp32, "autocast": autocast, "cast": cast}
    outputs: dict[str, np.ndarray | None] = {}
    errors: dict[str, str] = {}
    for k, f in runs.items():  # warm-up, and the outputs compared
        try:
            outputs[k] = f()
        except Exception as e:  # a non-finite output is a result here, not a crash
            outputs[k], errors[k] = None, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    times: dict[str, list[float]] = {k: [] for k in runs if outputs[k] is not None}
    for _ in range(repeats):
        for k in list(times):
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    row: dict[str, Any] = {"family": family, "model": model.name, "weights": model.weights_source,
                           "size": f"{size[0]}x{size[1]}", "fp32_s": round(med["fp32"], 4)}
    for k in ("autocast", "cast"):
        if outputs[k] is None:
            row[k] = {"finite": False, "error": errors[k]}
            continue
        stats = level_stats(outputs["fp32"], outputs[k])
        ratio = med[k] / med["fp32"]
        row[k] = {"s": round(med[k], 4), "ratio": round(ratio, 3), "finite": True, **stats,
                  "auto": bool(ratio <= AUTO_BF16_MAX_RATIO and stats["within1"] >= AUTO_BF16_WITHIN1)}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="*", default=sorted(FAMILIES))
    ap.add_argument("--sizes", type=parse_sizes, default=parse_sizes("600x400"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    head = f"{'family':18s} {'size':>10s} {'fp32 s':>7s} | {'autocast':>8s} {'max lv':>6s} {'<=1 lv':>7s} | {'cast':>6s} {'max lv':>6s} {'<=1 lv':>7s}"
    print(head)
    print("-" * len(head))
    for family in args.families:
        for size in args.sizes:
            row = measure(family, size, args.repeats)
            rows.append(row)

            def cells(r: dict[str, Any]) -> str:
                if not r.get("finite"):
                    return f"{'non-finite':>8s} {'':>6s} {'':>7s}"
                return f"{r['ratio']:8.2f} {r['max_levels']:6d} {100 * r['within1']:6.2f}%"

            print(f"{family:18s} {row['size']:>10s} {row['fp32_s']:7.3f} | {cells(row['autocast'])} | {cells(row['cast'])}", flush=True)
    env = environment(native_bf16=cpu_has_native_bf16(), repeats=args.repeats,
                      policy={"max_ratio": AUTO_BF16_MAX_RATIO, "min_within1": AUTO_BF16_WITHIN1})
    write_results(args.json, env, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
