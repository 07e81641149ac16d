"""Cost of ``lle sample --n N`` against N separate ``lle enhance`` runs of an LLFlow model, on the CPU.

    python bench/sample.py [--model llflow.lle-synth-rqs] [--n 10] [--sizes 600x400,2048x1536,3840x2160]
                           [--threads T] [--weights FILE] [--json PATH]

Each measurement runs in a fresh process doing what the command does: read the image, the OOD
warning (when the model ships statistics), then ``batch.run_job`` (``lle enhance``: enhance and
write one image, glibc keeping freed memory as the command sets it) or ``sampling.run_sample_job``
(``lle sample``: draw N samples, write them and the contact sheet). The process reports the job's
wall time and its own peak RSS (``VmHWM``): the whole process, Python and torch included, which
``lle`` keeps near 2.5 GiB (``runner.PROCESS_MEMORY_MB``) by tiling what would not fit.

"Ten enhance runs" is ten times one timed enhance job (they are independent and identical). The
ratio is ``sample / (N x enhance)``. The encoder runs once per image (per tile when tiled) for all
samples, so the ratio is low for encoder-heavy models (the standard LLFlow: target 35%); for the
embedded demonstration flow the spline decoder costs as much as its small encoder, so a sample
costs nearly an enhance there.

Weights: ``--weights`` if given, the model's embedded weights if it has any (the default model
does); otherwise random, with Glow's data-dependent ActNorm initialisation on a crop of the input so
activations stay in a trained model's range. Run time does not depend on the weight values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark the checkout this script sits in, installed or not

from bench.enhance import environment, parse_sizes, peak_rss_mib, write_results
from lle_cli.loading import embedded_path
from lle_cli.models import build_model, load_state_strict
from lle_cli.registry import get_registry
from lle_cli.runner import PROCESS_MEMORY_MB, LoadedModel
from lle_cli.weights import load_upstream_checkpoint

DEFAULT_JSON = ROOT / "bench" / "results" / "sample.json"
DEFAULT_MODEL = "llflow.lle-synth-rqs"  # what `lle sample` runs without -m
DEFAULT_SIZES = "600x400,2048x1536,3840x2160"
TARGET = 0.35  # for the standard LLFlow (encoder-heavy); informative for other models


def load(name: str, weights: Path | None, init_rgb: np.ndarray) -> LoadedModel:
    entry = get_registry().resolve(name)
    if weights is None and embedded_path(entry) is not None:
        from lle_cli import api

        return api.load_model(name, device="cpu")
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


# -- a child process: one job, its own peak RSS -----------------------------------------------


def child(kind: str, name: str, weights: str, src: str, out: str, n: int) -> dict[str, Any]:
    from lle_cli.batch import Job, OutputOptions, run_job
    from lle_cli.imageio import read_image
    from lle_cli.ood import ood_warner
    from lle_cli.sampling import SampleOptions, run_sample_job, sampling_plan

    if kind == "enhance":
        from lle_cli._cpu import keep_freed_memory

        keep_freed_memory()  # as `lle enhance` does; `lle sample` leaves the allocator alone
    pic = read_image(src)
    h, w = pic.rgb.shape[:2]
    model = load(name, Path(weights) if weights else None, pic.rgb)
    del pic
    model.enhance(low_light(64, 48))  # warm-up: first-call kernel selection and NNPACK's start are not the steady state
    if kind == "enhance":
        plan = model.tile_plan(h, w)
        shape = {"tiles": 1 if plan is None else len(plan), "tile": "whole" if plan is None else plan.describe()}
    else:
        plan = sampling_plan(model, h, w, n)
        shape = {"tiles": 1 if plan.tiles is None else len(plan.tiles), "tile": plan.describe(), "chunk": plan.chunk, "spilled": plan.spill}
    t0 = time.perf_counter()
    warn = ood_warner(model)  # both commands score the input first when the model ships statistics
    if warn is not None:
        warn(src)
    if kind == "enhance":
        result = run_job(model, Job(src, str(Path(out) / "enhanced.png")), OutputOptions(overwrite=True))
        status, error = result.status, result.error
    else:
        res = run_sample_job(model, src, out, SampleOptions(n=n, seed=0, overwrite=True))
        status, error = res.status, res.error
        shape["bad_samples"] = sum(s["status"] != "ok" for s in res.samples)
    seconds = time.perf_counter() - t0
    if status not in ("ok", "partial"):
        raise SystemExit(f"{kind} failed: {error}")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak_rss_mib(), 1), "weights": model.weights_source, **shape}


def run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(name: str, weights: Path | None, width: int, height: int, n: int, work: Path) -> dict[str, Any]:
    from PIL import Image

    src = work / f"dark_{width}x{height}.png"
    Image.fromarray(np.rint(low_light(width, height) * 255).astype(np.uint8)).save(src)
    out = work / f"out_{width}x{height}"
    out.mkdir(exist_ok=True)
    w = str(weights or "")
    enh = run_child("enhance", name, w, str(src), str(out), str(n))
    smp = run_child("sample", name, w, str(src), str(out), str(n))
    ratio = smp["seconds"] / (n * enh["seconds"])
    return {
        "model": name,
        "weights": smp["weights"],
        "size": f"{width}x{height}",
        "megapixels": round(width * height / 1e6, 2),
        "n": n,
        "enhance_s": enh["seconds"],
        "n_enhance_s": round(n * enh["seconds"], 2),
        "sample_s": smp["seconds"],
        "ratio": round(ratio, 4),
        "target": TARGET,
        "meets_target": ratio <= TARGET,
        "enhance_tiles": enh["tile"],
        "sample_plan": smp["tile"],
        "sample_tiles": smp["tiles"],
        "decode_batch": smp["chunk"],
        "spilled": smp["spilled"],
        "bad_samples": smp["bad_samples"],
        "peak_rss_enhance_mib": enh["peak_rss_mib"],
        "peak_rss_sample_mib": smp["peak_rss_mib"],
        "peak_rss_scope": "whole process (VmHWM), fresh process per job",
        "under_budget": max(enh["peak_rss_mib"], smp["peak_rss_mib"]) <= PROCESS_MEMORY_MB,
        "load_average_1min_after": round(os.getloadavg()[0], 2),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [("size", "size"), ("enhance_s", "enhance s"), ("n_enhance_s", "n x enhance s"), ("sample_s", "sample s"),
            ("ratio", "ratio"), ("sample_tiles", "tiles"), ("decode_batch", "batch"),
            ("peak_rss_enhance_mib", "RSS enhance MiB"), ("peak_rss_sample_mib", "RSS sample MiB"),
            ("under_budget", f"<= {PROCESS_MEMORY_MB} MiB")]
    cells = [[str(r[k]) for k, _ in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
    for line in [[h for _, h in cols], ["-" * w for w in widths], *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, name, weights, src, out, n = argv[1:7]
        print(json.dumps(child(kind, name, weights, src, out, int(n))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"an LLFlow model name (default {DEFAULT_MODEL}, `lle sample`'s)")
    p.add_argument("--weights", type=Path, default=None, help="weights file (default: embedded, else random, see the docstring)")
    p.add_argument("--n", type=int, default=10, help="samples drawn (default 10)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads in the children (default: torch's choice)")
    p.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES, help=f"comma-separated WIDTHxHEIGHT (default {DEFAULT_SIZES})")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)})")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(max(1, args.threads))
    env = environment(load_average_1min=round(os.getloadavg()[0], 2), process_memory_target_mib=PROCESS_MEMORY_MB)
    print(f"torch {env['torch']}, {env['threads']} threads, {env['cpu']} (load {env['load_average_1min']})", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in args.sizes:
            print(f"{w}x{h}: lle enhance once, then lle sample --n {args.n}, each in a fresh process ...", file=sys.stderr, flush=True)
            rows.append(measure(args.model, args.weights, w, h, args.n, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # a long run's log keeps every figure
    print_table(rows)
    write_results(args.json, env, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
