"""Batch throughput of ``lle enhance DIR``: one image after another vs the pipelined batch.

    python bench/batch.py [--count 200] [--size 600x400] [--model NAME] [--weights FILE] [--json PATH]

A directory of ``--count`` PNGs is made from the real photos in ``../shared/data`` (resized and
cropped to ``--size``, in a temporary folder). ``lle_cli.batch.run_batch`` (what ``lle enhance DIR``
runs) enhances it with ``pipeline=False`` (read, enhance, write one after another) and with the
pipeline (the next image decoded and the previous one encoded on helper threads while the model
runs). The two modes alternate over blocks of the folder, so a machine shared with other jobs slows
both alike. Reported: images per second, the median single-image latency (one job alone), and CPU
utilisation = process CPU time / wall time (2.0 = both cores busy).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark the checkout this script sits in, installed or not

from lle_cli import api
from lle_cli._cpu import keep_freed_memory  # noqa: E402
from lle_cli.batch import Job, OutputOptions, run_batch  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"
DEFAULT_JSON = ROOT / "bench" / "results" / "batch.json"
SOURCES = ("lol_eval15/low", "lowlight_train", "backlit")


def make_folder(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """``count`` PNGs: random crops (at least half the photo) of the shared photos, resized."""
    photos = sorted(p for d in SOURCES if (SHARED_DATA / d).is_dir() for p in (SHARED_DATA / d).iterdir() if p.suffix.lower() in (".png", ".jpg"))
    if not photos:
        raise SystemExit(f"no photos under {SHARED_DATA}")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        with Image.open(photos[i % len(photos)]) as im:
            im = im.convert("RGB")
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            out = folder / f"img{i:04d}.png"
            im.crop((x0, y0, x0 + cw, y0 + ch)).resize((width, height), Image.LANCZOS).save(out, compress_level=1)
        paths.append(out)
    return paths


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def run_block(model, paths: list[Path], out: Path, pipeline: bool) -> tuple[float, float]:
    jobs = [Job(str(p), str(out / p.name)) for p in paths]
    c0, t0 = cpu_seconds(), time.perf_counter()
    for r in run_batch(model, jobs, OutputOptions(overwrite=True), pipeline=pipeline):
        if r.status != "ok":
            raise SystemExit(f"{r.input}: {r.error}")
    return time.perf_counter() - t0, cpu_seconds() - c0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200, help="images in the folder (default 200)")
    p.add_argument("--size", default="600x400", help="WIDTHxHEIGHT of every image (default 600x400)")
    p.add_argument("--blocks", type=int, default=4, help="alternate the two modes over this many blocks (default 4)")
    p.add_argument("--latency-runs", type=int, default=5, help="single images timed alone (default 5)")
    p.add_argument("--model", default=None, help="registry name (default: the embedded default model)")
    p.add_argument("--weights", default=None, help="weights file for --model")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)})")
    args = p.parse_args(argv)
    w, _, h = args.size.lower().partition("x")
    if not (w.isdigit() and h.isdigit()) or args.count < args.blocks or args.blocks < 1:
        p.error("--size must be WIDTHxHEIGHT and --count at least --blocks")
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the lle command does (process-wide: the baseline gets it too)
    model = api.load_model(args.model, weights=args.weights, device="cpu", precision="fp32")
    print(f"{model.name} ({model.weights_source}), torch {torch.get_num_threads()} threads", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="lle-batch-") as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        src.mkdir()
        out.mkdir()
        paths = make_folder(src, args.count, int(w), int(h))
        run_block(model, paths[:2], out, True)  # warm-up
        totals = {False: [0.0, 0.0], True: [0.0, 0.0]}
        n = len(paths)
        for b in range(args.blocks):
            block = paths[b * n // args.blocks : (b + 1) * n // args.blocks]
            for pipeline in ((False, True) if b % 2 == 0 else (True, False)):
                dw, dc = run_block(model, block, out, pipeline)
                totals[pipeline][0] += dw
                totals[pipeline][1] += dc
                print(f"  block {b + 1}/{args.blocks} {'pipelined' if pipeline else 'sequential'}: "
                      f"{len(block) / dw:.2f} img/s", file=sys.stderr)
        latency = []
        for path in paths[: args.latency_runs]:
            t0 = time.perf_counter()
            (r,) = run_batch(model, [Job(str(path), str(out / path.name))], OutputOptions(overwrite=True))
            latency.append(time.perf_counter() - t0)

    rows: list[dict[str, Any]] = []
    for pipeline in (False, True):
        wall_s, cpu_s = totals[pipeline]
        rows.append({
            "mode": "pipelined" if pipeline else "sequential",
            "images": n,
            "wall_s": round(wall_s, 2),
            "images_per_s": round(n / wall_s, 3),
            "cpu_s": round(cpu_s, 2),
            "cpu_utilisation": round(cpu_s / wall_s, 2),
        })
    lat = {"median_s": round(statistics.median(latency), 3), "min_s": round(min(latency), 3), "max_s": round(max(latency), 3)}
    speedup = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    print(f"{'mode':<11}  images  wall s  img/s   CPU s   cores busy")
    print(f"{'-' * 11}  ------  ------  ------  ------  ----------")
    for r in rows:
        print(f"{r['mode']:<11}  {r['images']:6d}  {r['wall_s']:6.1f}  {r['images_per_s']:6.2f}  {r['cpu_s']:6.1f}  {r['cpu_utilisation']:10.2f}")
    print(f"pipelined / sequential throughput: {speedup:.2f}x; single-image latency median {lat['median_s']:.3f} s "
          f"(min {lat['min_s']:.3f}, max {lat['max_s']:.3f}) = {1 / lat['median_s']:.2f} img/s alone")
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "model": model.name, "size": args.size,
        "note": "machine shared with other jobs; the two modes alternate over blocks of the folder",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"environment": env, "results": rows, "single_image_latency": lat,
                                     "pipelined_speedup": round(speedup, 3)}, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
