"""Time one representative model per family on the CPU at a small and a large image size.

    python bench/enhance.py [--repeats N] [--threads T] [--json PATH] [--families F ...] [--sizes WxH,...]

Weights come from ``../shared/upstream/weights`` when that checkout is present and otherwise are
random: the run time of these convolutional networks does not depend on the weight values.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark the checkout this script sits in, installed or not

from lle_cli.loading import embedded_path  # noqa: E402
from lle_cli.models import FAMILIES, build_model, load_state_strict  # noqa: E402
from lle_cli.registry import ModelEntry, get_registry  # noqa: E402
from lle_cli.runner import LoadedModel  # noqa: E402
from lle_cli.weights import load_safetensors, load_upstream_checkpoint, sha256_file  # noqa: E402

UPSTREAM_DIR = ROOT.parent / "shared" / "upstream" / "weights"
DEFAULT_JSON = ROOT / "bench" / "results" / "enhance.json"
DEFAULT_SIZES = "600x400,2048x1536"

# The shared folder renames the few upstream files whose original names say nothing
# (Epoch99.pth, enhancement_model.pth); the rest keep the authors' file names.
LOCAL_NAMES = {
    "clip-lit.official": "clip_lit_official.pth",
    "scl-lle.official": "scl_lle.pth",
    "zero-dce.official": "zero_dce.pth",
    "zero-dce-pp.official": "zero_dce_pp.pth",
    "pairlie.official": "pairlie.pth",
}


def upstream_file(entry: ModelEntry) -> Path:
    """Where ../shared keeps this model's authors' checkpoint: the manifest's file name, a known local
    name, or the model's name with underscores (``sci.easy`` -> ``sci_easy.pt``); callers check the sha256."""
    stem = entry.name.replace(".", "_").replace("-", "_")
    candidates = [LOCAL_NAMES.get(entry.name), entry.upstream.filename if entry.upstream else None, f"{stem}.pth", f"{stem}.pt"]
    for name in candidates:
        if name and (UPSTREAM_DIR / name).is_file():
            return UPSTREAM_DIR / name
    return UPSTREAM_DIR / (candidates[0] or candidates[1] or f"{stem}.pth")


def pick_entry(family: str) -> ModelEntry:
    """The model a user is most likely to run for this family."""
    reg = get_registry()
    preferred = {"illumination_unet": ["rave.unpaired"], "zero_dce": [reg.default, "scl-lle.official"]}
    for name in preferred.get(family, [reg.default]):
        if name in reg.models and reg.models[name].family == family:
            return reg.models[name]
    return next(e for e in reg.models.values() if e.family == family)


def load_for_bench(entry: ModelEntry) -> LoadedModel:
    module = build_model(entry.family, entry.architecture)
    source = "random init"
    if entry.upstream:
        path = upstream_file(entry)
        # only a file that is byte for byte the manifest's checkpoint counts as "upstream weights"
        if path.is_file() and sha256_file(path) == entry.upstream.sha256:
            load_state_strict(module, load_upstream_checkpoint(path), source=str(path))
            source = f"upstream {path.name}"
    emb = embedded_path(entry)
    if emb is not None and source == "random init":
        load_state_strict(module, load_safetensors(emb), source=str(emb))
        source = "embedded"
    module.eval()
    return LoadedModel(entry, module, torch.device("cpu"), torch.float32, source)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        w, _, h = item.strip().lower().partition("x")
        if not (w.isdigit() and h.isdigit()) or int(w) < 1 or int(h) < 1:
            raise argparse.ArgumentTypeError(f"{item!r} is not WIDTHxHEIGHT")
        sizes.append((int(w), int(h)))
    return sizes


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(**extra: Any) -> dict[str, Any]:
    """What every benchmark's JSON records about the run, plus ``extra``."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "device": "cpu",
        "dtype": "float32",
        **extra,
    }


def write_results(path: Path, env: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB, since start or since ``reset_peak_rss``.

    On Linux this reads ``VmHWM``, not ``ru_maxrss``: the kernel carries a process's RSS high-water
    mark across ``exec``, so a child started from a 2 GB parent has an ``ru_maxrss`` of at least 2 GB
    however little it uses itself (the cause of a memory test that read 1,827 B/px inside a full
    pytest run and 800 alone). macOS has no /proc; its ``ru_maxrss`` is in bytes.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def reset_peak_rss() -> bool:
    """Reset Linux's RSS high-water mark (VmHWM), so the next ``peak_rss_mib`` is this run's alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def time_one(model: LoadedModel, width: int, height: int, repeats: int) -> dict[str, Any]:
    # low values, like the under-exposed photos the models are made for
    rgb = np.random.default_rng(0).random((height, width, 3), dtype=np.float32) * 0.25
    per_run = reset_peak_rss()
    model.enhance(rgb)  # warm-up: first-call allocations and kernel selection are not the steady state
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.enhance(rgb)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    mpix = width * height / 1e6
    return {
        "family": model.entry.family,
        "model": model.name,
        "weights": model.weights_source,
        "size": f"{width}x{height}",
        "megapixels": round(mpix, 4),
        "repeats": repeats,
        "times_s": [round(t, 4) for t in times],
        "median_s": round(median, 4),
        "min_s": round(min(times), 4),
        "mpix_per_s": round(mpix / median, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "peak_rss_scope": "run" if per_run else "process",
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [("family", "family"), ("model", "model"), ("size", "size"), ("median_s", "median s"),
            ("min_s", "min s"), ("mpix_per_s", "MP/s"), ("peak_rss_mib", "peak RSS MiB"), ("peak_rss_scope", "RSS scope")]
    cells = [[str(r[k]) for k, _ in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
    for line in [[h for _, h in cols], ["-" * w for w in widths], *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)})")
    p.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    p.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES, help=f"comma-separated WIDTHxHEIGHT (default {DEFAULT_SIZES})")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)

    env = environment()
    print(f"torch {env['torch']}, {env['threads']} threads, {env['cpu']}", file=sys.stderr)

    rows = []
    for family in args.families:
        model = load_for_bench(pick_entry(family))
        print(f"{family}: {model.name} ({model.weights_source})", file=sys.stderr)
        for w, h in args.sizes:
            rows.append(time_one(model, w, h, args.repeats))
        del model

    print_table(rows)
    write_results(args.json, env, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
