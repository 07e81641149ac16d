"""lle's network time when another process keeps one core busy, for OpenMP's wait policies.

    python bench/threads_load.py [--model NAME] [--size 2048x1536] [--repeats 5] [--json PATH]

A batch job often shares its machine. With OpenMP's default wait policy the threads of a parallel
region spin while they wait for the others; when a foreign process holds one of the cores, the thread
that was preempted holds up every region, and the spinning ones burn the time it needs. ``lle``
(``lle_cli._threads.prepare_process``) sets ``OMP_WAIT_POLICY=PASSIVE`` and sizes the pool from the
CPUs the process may use. For each setting this runs the model (``enhance_tensor``, fp32, untiled) in
a fresh process on a quiet machine and beside one busy core (a process spinning in a loop), and
reports the median time and ``loaded / quiet``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "bench" / "results" / "threads_load.json"

CHILD = r"""
import json, os, sys, time, statistics
sys.path.insert(0, {root!r})
import torch
from lle_cli import api
model = api.load_model({model!r}, device="cpu", precision="fp32", offline=True)
h, w = {h}, {w}
x = torch.rand(1, 3, h, w) * 0.3
model.enhance_tensor(x)
times = []
for _ in range({repeats}):
    t = time.perf_counter(); model.enhance_tensor(x); times.append(time.perf_counter() - t)
print(json.dumps({{"median": statistics.median(times), "threads": torch.get_num_threads()}}))
"""


def _spin(stop: "mp.synchronize.Event") -> None:
    while not stop.is_set():
        pass


def run(model: str, size: tuple[int, int], repeats: int, env_extra: dict[str, str], loaded: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(env_extra)
    stop = mp.Event()
    spinner = mp.Process(target=_spin, args=(stop,), daemon=True) if loaded else None
    if spinner:
        spinner.start()
    try:
        code = CHILD.format(root=str(ROOT), model=model, h=size[1], w=size[0], repeats=repeats)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    finally:
        if spinner:
            stop.set()
            spinner.join()
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="zero-dce.lle-sice")
    ap.add_argument("--size", default="2048x1536")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    settings = {
        f"OpenMP default, {cpus} threads": {"OMP_NUM_THREADS": str(cpus)},
        f"lle: PASSIVE, {cpus} threads": {"OMP_NUM_THREADS": str(cpus), "OMP_WAIT_POLICY": "PASSIVE"},
        "1 thread": {"OMP_NUM_THREADS": "1"},
    }
    rows = []
    print(f"{args.model} at {w}x{h}, median of {args.repeats}; load average {os.getloadavg()[0]:.2f} on {cpus} CPUs")
    print(f"{'setting':34s} {'quiet s':>8s} {'1 busy core s':>13s} {'ratio':>6s}")
    for name, extra in settings.items():
        quiet = run(args.model, (w, h), args.repeats, extra, False)["median"]
        busy = run(args.model, (w, h), args.repeats, extra, True)["median"]
        rows.append({"setting": name, "env": extra, "quiet_s": round(quiet, 4), "loaded_s": round(busy, 4), "ratio": round(busy / quiet, 3)})
        print(f"{name:34s} {quiet:8.3f} {busy:13.3f} {busy / quiet:6.2f}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"model": args.model, "size": [w, h], "cpus": cpus, "date": time.strftime("%Y-%m-%d"),
                                     "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
