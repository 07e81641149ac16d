"""Tiled inference per family: tiled vs untiled difference and time, and whole-process peak memory on big photos.

    python bench/tiling.py [--families F ...] [--diff-size WxH] [--rss-sizes WxH,...] [--sample-n N]
                           [--skip-diff] [--skip-rss] [--skip-sample] [--threads T] [--json PATH]

* diff: the same image (a real backlit photo from ../shared/data resized to ``--diff-size``, or a
  synthetic one) enhanced whole (``tile=0``) and with the automatic tiling, each in its own process;
  the largest difference in 8-bit levels (``round(255 x)``), the mean absolute difference, the run
  times and each run's peak RSS.
* speed: the tiled path's cost where it must tile. For each of ``--speed-families`` (default the three
  that tile at 3 MP under the bounded target) at ``--speed-size`` (default 2048x1536), the model a
  user runs (real weights, as the rss runs) in one process with glibc keeping freed memory as
  ``lle enhance`` sets it, timed alternately untiled and tiled (``--speed-repeats`` each after a
  warm-up, medians), under two budgets that make it tile: the bounded 2.5 GiB process target
  (``LLE_MEMORY_MB=2560``) and a machine 20 % short of the untiled pass (an activation budget of 0.8x
  what it needs, ``LLE_TILE_MEMORY_MB``); plus the plan this machine's own budget picks.
* rss: for each of ``--rss-sizes`` (default 8 MP and 24 MP), a JPEG of that size (the backlit photo
  resized, or a synthetic scene) run through the real commands, each in a fresh process:
  ``lle enhance`` with one model per family and ``lle sample --n N`` (default 4) with its default
  model. The child calls the CLI's ``main`` (read, OOD warning, tiles, write, contact sheet), then
  reports its own peak RSS (``VmHWM``, see ``enhance.peak_rss_mib``), which must stay under the
  process target they run under: ``LLE_MEMORY_MB`` if set, else the bounded 2.5 GiB
  (``memory.PROCESS_MEMORY_MB``; by default ``lle`` plans for half the machine's free memory).

Models: the diff uses upstream RAVE (``rave.unpaired``) when ../shared is present, the embedded
Zero-DCE, and LLFlow's small config (``llflow.lol-small``) with **random weights** after one
data-dependent ActNorm initialisation (run time and memory do not depend on the weight values, the
tiled-vs-untiled difference does). The rss runs use the models a user runs: ``rave.unpaired`` with
``--weights ../shared/upstream/weights/rave_unpaired.pth``, the embedded ``zero-dce.lle-sice`` and
``llflow.lle-synth-rqs`` (also ``lle sample``'s default).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
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
sys.path.insert(0, str(ROOT / "bench"))

from enhance import UPSTREAM_DIR, cpu_model, load_for_bench, parse_sizes, peak_rss_mib, pick_entry, upstream_file

from lle_cli.models import FAMILIES, build_model
from lle_cli.registry import get_registry
from lle_cli.runner import (
    PROCESS_MEMORY_MB,
    TILE_MEMORY_ENV,
    LoadedModel,
)

DEFAULT_JSON = ROOT / "bench" / "results" / "tiling.json"
PHOTO = ROOT.parent / "shared" / "data" / "backlit" / "110_51093502029_o.jpg"


def load_family(family: str) -> LoadedModel:
    if family != "llflow":
        return load_for_bench(pick_entry(family))
    entry = get_registry().resolve("llflow.lol-small")
    torch.manual_seed(0)
    module = build_model("llflow", entry.architecture)
    x = torch.from_numpy(synthetic(96, 128)).permute(2, 0, 1)[None]
    module.initialize_actnorms(x, (x * 4).clamp(0, 1))
    return LoadedModel(entry, module.eval(), torch.device("cpu"), torch.float32, "random init (seed 0) + ActNorm init")


def synthetic(h: int, w: int) -> np.ndarray:
    """A dim gradient scene with an edge and noise, like an under-exposed photo."""
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    base = 0.04 + 0.2 * y * x + 0.1 * (x > 0.6)
    rgb = base[:, :, None] * np.array([1.0, 0.8, 0.6], np.float32)
    rgb = rgb + np.random.default_rng(0).random((h, w, 3), dtype=np.float32) * 0.05
    return np.clip(rgb, 0, 1).astype(np.float32)


def test_image(w: int, h: int) -> tuple[np.ndarray, str]:
    if PHOTO.is_file():
        from PIL import Image

        with Image.open(PHOTO) as im:
            rgb = np.asarray(im.convert("RGB").resize((w, h), Image.LANCZOS), dtype=np.float32) / 255
        return rgb, f"{PHOTO.name} resized"
    return synthetic(h, w), "synthetic"


# -- child processes: one measurement each, fresh peak RSS -----------------------------------


def describe_plan(plan: Any) -> dict[str, Any]:
    if plan is None:
        return {"tile": "whole", "tiles": 1, "work": 1.0}
    return {"tile": f"{plan.cols[0].size}x{plan.rows[0].size}", "tiles": len(plan), "work": round(plan.work, 3)}


def child_diff(family: str, w: int, h: int, mode: str, out_path: str) -> dict[str, Any]:
    model = load_family(family)
    rgb, source = test_image(w, h)
    model.tile = 0 if mode == "untiled" else None
    plan = model.tile_plan(h, w)
    base = peak_rss_mib()
    t0 = time.perf_counter()
    out = model.enhance(rgb)
    seconds = time.perf_counter() - t0
    np.save(out_path, out)
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak_rss_mib(), 1), "rss_before_mib": round(base, 1),
            **describe_plan(plan), "image": source, "model": model.name, "weights": model.weights_source}


def cli_model(family: str) -> tuple[str, Path | None]:
    """The model a user runs for this family and the ``--weights`` file it needs (None: embedded)."""
    from lle_cli.loading import embedded_path
    from lle_cli.weights import sha256_file

    if family == "llflow":
        return "llflow.lle-synth-rqs", None  # embedded, real weights, and `lle sample`'s default
    entry = pick_entry(family)
    if entry.upstream is not None:
        path = upstream_file(entry)
        if path.is_file() and sha256_file(path) == entry.upstream.sha256:
            return entry.name, path
    if embedded_path(entry) is not None:
        return entry.name, None
    raise SystemExit(f"no weights for {entry.name} on this machine ({UPSTREAM_DIR} or embedded)")


def child_speed(family: str, w: int, h: int, repeats: int) -> dict[str, Any]:
    """Untiled and tiled ``enhance`` of one photo, alternating, under the budgets that make it tile."""
    import statistics

    from lle_cli import api
    from lle_cli.memory import MEMORY_ENV, process_memory_target

    api.keep_freed_memory()
    name, weights = cli_model(family)
    model = api.load_model(name, weights=weights, device="cpu", precision="fp32")
    rgb, source = test_image(w, h)
    for var in (MEMORY_ENV, TILE_MEMORY_ENV):
        os.environ.pop(var, None)
    own = {"target_mib": round(process_memory_target()), **describe_plan(model.tile_plan(h, w))}
    th, tw = model._tiled_size(h, w)
    need_mib = model.spec.activation_bytes(model.module.config) * th * tw / 2**20
    budgets = {"bounded 2.5 GiB": {MEMORY_ENV: str(PROCESS_MEMORY_MB)},
               "20% short": {TILE_MEMORY_ENV: str(round(0.8 * need_mib))}}
    model.tile = None
    model.enhance(rgb[:256, :256])  # warm-up: oneDNN's kernels for the first shapes
    rows = []
    for label, env in budgets.items():
        os.environ.update(env)
        plan = model.tile_plan(h, w)
        times: dict[str, list[float]] = {"untiled": [], "tiled": []}
        for _ in range(repeats + 1):  # the first round warms this plan's tile shapes up, not timed
            for mode in ("untiled", "tiled"):
                model.tile = 0 if mode == "untiled" else None
                t0 = time.perf_counter()
                model.enhance(rgb)
                times[mode].append(time.perf_counter() - t0)
        for var in env:
            os.environ.pop(var)
        model.tile = None
        untiled, tiled = (statistics.median(times[m][1:]) for m in ("untiled", "tiled"))
        rows.append({"budget": label, **describe_plan(plan), "untiled_s": round(untiled, 2), "tiled_s": round(tiled, 2),
                     "ratio": round(tiled / untiled, 3), "times_s": {m: [round(t, 2) for t in v[1:]] for m, v in times.items()}})
    return {"model": name, "weights": "upstream " + weights.name if weights is not None else "embedded", "image": source,
            "untiled_need_mib": round(need_mib), "own_budget": own, "rows": rows}


def big_photo(path: Path, w: int, h: int) -> str:
    """A JPEG of w x h: the backlit photo resized (a real scene), or the synthetic one."""
    from PIL import Image

    if PHOTO.is_file():
        with Image.open(PHOTO) as im:
            im.convert("RGB").resize((w, h), Image.LANCZOS).save(path, quality=92)
        return f"{PHOTO.name} resized"
    Image.fromarray((synthetic(h, w) * 255).astype(np.uint8)).save(path, quality=92)
    return "synthetic"


def child_cli(command: str, family: str, w: int, h: int, work: str, n: int) -> dict[str, Any]:
    """One real command on a fresh w x h photo; this process's peak RSS is the command's."""
    from lle_cli.cli.main import main as lle_main

    src = Path(work) / f"in_{w}x{h}.jpg"
    if not src.is_file():
        raise SystemExit(f"{src} missing: the parent writes it")
    out = Path(work) / f"out_{command}_{family}"
    out.mkdir(exist_ok=True)  # an existing folder: `lle enhance -o` then writes into it
    name, weights = cli_model(family)
    args = [command, str(src), "-o", str(out), "--model", name, "--overwrite", "-q", "--device", "cpu", "--no-record"]
    if weights is not None:
        args += ["--weights", str(weights)]
    if command == "sample":
        args += ["--n", str(n), "--seed", "0"]
    from lle_cli import api

    model = api.load_model(name, weights=weights, device="cpu")
    if command == "sample":
        from lle_cli.sampling import sampling_plan

        plan = sampling_plan(model, h, w, n)
        shape = {**describe_plan(plan.tiles), "chunk": plan.chunk, "spilled": plan.spill}
    else:
        shape = describe_plan(model.tile_plan(h, w))
    del model
    t0 = time.perf_counter()
    code = lle_main(args)
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"lle {command} exited with {code}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(peak_rss_mib(), 1), **shape, "model": name,
            "weights": "upstream " + weights.name if weights is not None else "embedded", "cmdline": " ".join(["lle", *args])}


def run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the table -------------------------------------------------------------------------------


def print_table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> None:
    cells = [[str(r.get(k, "")) for k, _ in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
    for line in [[h for _, h in cols], ["-" * w for w in widths], *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, family, w, h, extra = argv[1], argv[2], int(argv[3]), int(argv[4]), argv[5:]
        if kind == "diff":
            print(json.dumps(child_diff(family, w, h, extra[0], extra[1])))
        elif kind == "speed":
            print(json.dumps(child_speed(family, w, h, int(extra[0]))))
        else:
            print(json.dumps(child_cli(kind, family, w, h, extra[0], int(extra[1]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    p.add_argument("--diff-size", type=parse_sizes, default="2304x1728", help="WIDTHxHEIGHT for tiled vs untiled (default 4 MP)")
    p.add_argument("--rss-sizes", type=parse_sizes, default="3840x2160,6000x4000",
                   help="WIDTHxHEIGHT list for whole-process peak memory (default 8 MP and 24 MP)")
    p.add_argument("--sample-n", type=int, default=4, help="samples of the `lle sample` memory runs (default 4)")
    p.add_argument("--speed-families", nargs="+", choices=sorted(FAMILIES), default=["illumination_unet", "llflow", "zero_dce"])
    p.add_argument("--speed-size", type=parse_sizes, default="2048x1536", help="WIDTHxHEIGHT for the tiled path's cost")
    p.add_argument("--speed-repeats", type=int, default=3, help="timed runs of each way per budget (default 3)")
    p.add_argument("--skip-diff", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-rss", action="store_true", help="no enhance memory runs")
    p.add_argument("--skip-sample", action="store_true", help="no `lle sample` memory runs")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads in the children")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    # the children run as ``lle`` runs (lle_cli._threads.prepare_process): idle OpenMP threads sleep.
    # It matters for LLFlow, whose Winograd convolutions run on NNPACK's own threads: OpenMP's
    # spinning threads can take the cores from them (two separate runs at 2048x1536: 11.9 s spinning,
    # 10.0 s passive; not an alternating measurement)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # the diff and rss runs check the bounded target (by default a process plans for half the
    # machine's free memory, lle_cli.memory); the speed runs set their own budgets
    from lle_cli.memory import MEMORY_ENV

    os.environ.setdefault(MEMORY_ENV, str(PROCESS_MEMORY_MB))
    target = float(os.environ[MEMORY_ENV])
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
        "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2), "device": "cpu", "dtype": "float32",
        "tile_budget_env": TILE_MEMORY_ENV, "tile_budget_env_value": os.environ.get(TILE_MEMORY_ENV),
        "process_memory_target_mib": target, "process_memory_env": MEMORY_ENV,
    }
    print(f"torch {env['torch']}, {env['cpus']} CPUs (load {env['load_average_1min']}), {env['cpu']}", file=sys.stderr)
    diffs, rss, speed = [], [], []
    if not args.skip_speed:
        (w, h), = args.speed_size
        for family in args.speed_families:
            print(f"speed {family} {w}x{h} ...", file=sys.stderr, flush=True)
            r = run_child("speed", family, str(w), str(h), str(args.speed_repeats))
            own = r["own_budget"]
            for row in r["rows"]:
                speed.append({"family": family, "model": r["model"], "weights": r["weights"], "size": f"{w}x{h}",
                              "untiled_need_mib": r["untiled_need_mib"], "own_target_mib": own["target_mib"],
                              "own_plan": own["tile"] if own["tiles"] == 1 else f"{own['tiles']} x {own['tile']}", **row})
                print(json.dumps(speed[-1]), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_diff:
            (w, h), = args.diff_size
            for family in args.families:
                print(f"diff {family} {w}x{h} ...", file=sys.stderr)
                runs = {m: run_child("diff", family, str(w), str(h), m, f"{tmp}/{m}.npy") for m in ("untiled", "tiled")}
                a, b = np.load(f"{tmp}/untiled.npy"), np.load(f"{tmp}/tiled.npy")
                levels = np.abs(np.rint(a * 255) - np.rint(b * 255))
                diffs.append({
                    "family": family, "model": runs["tiled"]["model"], "weights": runs["tiled"]["weights"],
                    "size": f"{w}x{h}", "image": runs["tiled"]["image"], "tile": runs["tiled"]["tile"],
                    "tiles": runs["tiled"]["tiles"], "work": runs["tiled"]["work"], "max_diff_levels": int(levels.max()),
                    "pixels_off_by_1_pct": round(float((levels >= 1).mean() * 100), 4),
                    "mean_abs_diff": float(np.abs(a - b).mean()), "max_abs_diff": float(np.abs(a - b).max()),
                    "untiled_s": runs["untiled"]["seconds"], "tiled_s": runs["tiled"]["seconds"],
                    "untiled_peak_rss_mib": runs["untiled"]["peak_rss_mib"], "tiled_peak_rss_mib": runs["tiled"]["peak_rss_mib"],
                })
        runs = [("enhance", f) for f in args.families if not args.skip_rss] + ([("sample", "llflow")] if not args.skip_sample else [])
        for w, h in args.rss_sizes if runs else []:
            image = big_photo(Path(tmp) / f"in_{w}x{h}.jpg", w, h)
            for command, family in runs:
                print(f"rss: lle {command} {family} {w}x{h} ...", file=sys.stderr, flush=True)
                r = run_child(command, family, str(w), str(h), tmp, str(args.sample_n))
                row = {"command": command, "family": family, "size": f"{w}x{h}", "megapixels": round(w * h / 1e6, 2),
                       "image": image, "n": args.sample_n if command == "sample" else None, **r,
                       "under_budget": r["peak_rss_mib"] <= target}
                rss.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)  # a long run's log keeps every figure
    if diffs:
        print_table(diffs, [("family", "family"), ("model", "model"), ("size", "size"), ("tile", "tile"), ("tiles", "tiles"), ("work", "work"),
                            ("max_diff_levels", "max diff (8-bit levels)"), ("pixels_off_by_1_pct", "% px off"),
                            ("max_abs_diff", "max |diff|"), ("untiled_s", "untiled s"), ("tiled_s", "tiled s"),
                            ("untiled_peak_rss_mib", "untiled RSS MiB"), ("tiled_peak_rss_mib", "tiled RSS MiB")])
    if speed:
        print_table(speed, [("family", "family"), ("model", "model"), ("size", "size"), ("budget", "budget"), ("tiles", "tiles"),
                            ("tile", "tile"), ("work", "work"), ("untiled_s", "untiled s"), ("tiled_s", "tiled s"),
                            ("ratio", "tiled / untiled"), ("own_plan", "this machine's plan")])
    if rss:
        print_table(rss, [("command", "command"), ("model", "model"), ("size", "size"), ("n", "n"), ("tile", "tile"), ("tiles", "tiles"),
                          ("work", "work"), ("chunk", "latents/pass"), ("spilled", "spilled"), ("seconds", "whole command s"),
                          ("peak_rss_mib", "peak RSS MiB"), ("under_budget", f"<= {target:.0f} MiB")])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"environment": env, "diff": diffs, "speed": speed, "rss": rss}, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
