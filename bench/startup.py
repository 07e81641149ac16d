"""Start-up cost of the command line: ``lle --help``, and ``lle enhance`` on a tiny image split into
import, model load and compute, plus which heavy modules the enhance path imports; and a one-shot
``lle enhance`` of a 600x400 photo (PyTorch, and ``--runtime onnx`` from its cached export) against
a minimal ONNX Runtime script that runs the same exported file (read PNG, run, write PNG).

    python bench/startup.py [--repeats N] [--json PATH]

Every figure is a fresh interpreter (``subprocess``), as a user's shell runs it; the split comes from
timestamps taken inside that interpreter. ``-X importtime`` lists what ``lle enhance`` imports, so a
regression that drags in open_clip, huggingface_hub, scipy, torchvision or the training code shows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "bench" / "results" / "startup.json"
# imported on the enhance path, these would be pure start-up cost
NEEDLESS = ("open_clip", "huggingface_hub", "scipy", "torchvision", "lle_cli.train", "lle_cli.clip", "lle_cli.losses")

_SPLIT = r"""
import json, sys, time
t0 = time.perf_counter()
from lle_cli.cli import main as _main  # the entry point's own imports
from lle_cli import api
from lle_cli.batch import Job, OutputOptions, run_batch
t1 = time.perf_counter()
model = api.load_model(None, device="cpu")
t2 = time.perf_counter()
(r,) = run_batch(model, [Job(sys.argv[1], sys.argv[2])], OutputOptions(overwrite=True))
t3 = time.perf_counter()
assert r.status == "ok", r.error
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "compute_s": t3 - t2}))
"""


# The yardstick a user would write: the exported file in ONNX Runtime with two threads, nothing else.
_MINIMAL_ORT = r"""
import sys
import numpy as np
import onnxruntime as ort
from PIL import Image
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
session = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
x = np.asarray(Image.open(sys.argv[2]).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
y = session.run(None, {"image": np.ascontiguousarray(x)})[0][0]
Image.fromarray((np.clip(y, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)).save(sys.argv[3])
"""


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one fresh process (its own rusage, not the children's maximum)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
    return wall_s, usage.ru_maxrss / 1024


def one_shot(py: str, tmp: Path, repeats: int) -> dict[str, Any]:
    """lle enhance (PyTorch), lle enhance --runtime onnx (export cached) and the minimal script, in turn."""
    photo = ROOT.parent / "shared" / "data" / "lol_eval15" / "low" / "1.png"
    src = tmp / "photo.png"
    if photo.is_file():
        src.write_bytes(photo.read_bytes())
    else:
        Image.fromarray((np.random.default_rng(0).random((400, 600, 3)) * 60).astype(np.uint8)).save(src)
    env = {**os.environ, "LLE_HOME": str(tmp / "home")}
    out = str(tmp / "out.png")
    lle = [py, "-m", "lle_cli", "enhance", str(src), "-o", out, "--overwrite", "-q"]
    subprocess.run([*lle, "--runtime", "onnx"], check=True, cwd=ROOT, env=env, capture_output=True)  # exports once
    onnx = next((tmp / "home" / "exports").rglob("*.onnx"))
    contenders = {"lle enhance": lle, "lle enhance --runtime onnx": [*lle, "--runtime", "onnx"],
                  "minimal onnxruntime script": [py, "-c", _MINIMAL_ORT, str(onnx), str(src), out]}
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for k, cmd in contenders.items():
            runs[k].append(timed(cmd, env))
    rows = {k: {**summary([w for w, _ in v]), "peak_rss_mib": round(statistics.median(m for _, m in v), 1)} for k, v in runs.items()}
    base = rows["minimal onnxruntime script"]["median_s"]
    for k in rows:
        rows[k]["ratio_to_minimal"] = round(rows[k]["median_s"] / base, 2)
    return {"image": f"{src.name} 600x400" if photo.is_file() else "synthetic 600x400", "model": "the default", "contenders": rows}


def wall(cmd: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    return times


def summary(times: list[float]) -> dict[str, Any]:
    return {"times_s": [round(t, 3) for t in times], "min_s": round(min(times), 3),
            "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}


def imported_modules(cmd: list[str]) -> dict[str, float]:
    """Module -> cumulative import seconds, from ``python -X importtime``."""
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    out = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
            if cumulative.isdigit():
                out[name] = int(cumulative) / 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="runs of each command (default 5)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)})")
    args = p.parse_args(argv)
    py = sys.executable
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lle-startup-") as tmp:
        tiny, out = Path(tmp) / "tiny.png", Path(tmp) / "tiny_out.png"
        Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 80).astype(np.uint8)).save(tiny)
        enhance = [py, "-m", "lle_cli", "enhance", str(tiny), "-o", str(out), "--overwrite", "-q"]
        rows["help"] = summary(wall([py, "-m", "lle_cli", "--help"], args.repeats))
        rows["enhance_tiny"] = summary(wall(enhance, args.repeats))
        splits = []
        for _ in range(args.repeats):
            res = subprocess.run([py, "-c", _SPLIT, str(tiny), str(out)], check=True, capture_output=True, text=True, cwd=ROOT)
            splits.append(json.loads(res.stdout.strip().splitlines()[-1]))
        rows["enhance_split"] = {k: round(statistics.median(s[k] for s in splits), 3) for k in ("import_s", "load_s", "compute_s")}
        mods = imported_modules([py, "-X", "importtime", *enhance[1:]])
        rows["one_shot_600x400"] = one_shot(py, Path(tmp), args.repeats)
    heavy = sorted(m for m in mods if m.startswith(NEEDLESS))
    top = sorted(((m, s) for m, s in mods.items() if "." not in m), key=lambda kv: -kv[1])[:8]
    rows["enhance_imports"] = {"needless": heavy, "top_level_cumulative_s": {m: round(s, 3) for m, s in top}}

    split = rows["enhance_split"]
    table = [
        ("lle --help", rows["help"]["median_s"], rows["help"]["min_s"]),
        ("lle enhance tiny.png", rows["enhance_tiny"]["median_s"], rows["enhance_tiny"]["min_s"]),
        ("  import (lle_cli + torch)", split["import_s"], None),
        ("  load model", split["load_s"], None),
        ("  read + enhance + write", split["compute_s"], None),
    ]
    print(f"{'what':<28}  median s  min s")
    print(f"{'-' * 28}  --------  -----")
    for name, med, mn in table:
        print(f"{name:<28}  {med:8.3f}  {'' if mn is None else f'{mn:.3f}'}")
    print(f"needless imports on the enhance path: {', '.join(heavy) or 'none'}")
    print(f"\none-shot, {rows['one_shot_600x400']['image']}, the default model: {'median s':>8}  {'peak MiB':>8}  x minimal")
    for name, r in rows["one_shot_600x400"]["contenders"].items():
        print(f"  {name:<44}  {r['median_s']:8.3f}  {r['peak_rss_mib']:8.0f}  {r['ratio_to_minimal']:6.2f}")
    print("largest imports (cumulative s): " + ", ".join(f"{m} {s:.2f}" for m, s in top))
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "note": "2-core machine shared with other jobs; fresh interpreter per run"}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
