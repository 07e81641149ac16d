"""Past one process: images/s of ``lle enhance`` run plainly, with ``--workers 2`` and with ``--ray local``.

    python bench/scale.py [--model NAME] [--large 4] [--repeats 1] [--json PATH]

Each mode is the real command (``python -m lle_cli enhance DIR -o OUT/ --json``) in a fresh process,
as a user runs it, on two folders: LOL eval15's 15 low-light photos (600x400, ``../shared/data``)
and ``--large`` photos of 2048x1536 (the shared backlit and LIME photos, resized). Reported per run:
the whole command's images/s (start-up, model loading and, for Ray, the cluster included), the
steady images/s between the first and the last finished image, and the peak memory of all the
run's processes together (PSS summed over the process tree, sampled every 0.2 s). The Ray runs and
the start-up measurement run inside a loopback-only network namespace (``unshare -n``, then ``ip
link set lo up``) with usage statistics off; they are left out, with the reason, where that is not
permitted. Also measured: what a private cluster costs before the first image (``ray.init``, one
actor loading the model, ``ray.shutdown``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEFAULT_JSON = ROOT / "bench" / "results" / "scale.json"
MODES: list[tuple[str, list[str], bool]] = [  # label, extra flags, needs the network namespace
    ("plain (1 process, 2 threads)", [], False),
    ("--workers 2 (1 thread each)", ["--workers", "2", "--threads-per-worker", "1"], False),
    ("--ray local, 1 actor x 2 threads", ["--ray", "local", "--workers", "1", "--threads-per-worker", "2"], True),
    ("--ray local, 2 actors x 1 thread", ["--ray", "local", "--workers", "2", "--threads-per-worker", "1"], True),
]


def namespace_problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip is not installed"
    r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"no network namespace here ({r.stderr.strip()[:120]})"


def in_namespace(cmd: list[str]) -> list[str]:
    """``cmd`` in a network namespace whose only interface is loopback: Ray's services cannot leave it."""
    return ["unshare", "-n", "sh", "-c", "ip link set lo up && exec " + " ".join(shlex.quote(c) for c in cmd)]


def tree_pss_mb(root: int) -> float:
    """PSS summed over ``root`` and all its descendants (MB): shared pages (torch's libraries, Ray's
    object store) counted once in all, not once per process as RSS would."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields.get("PPid", "0").strip() or 0), []).append(pid)
        rss[pid] = _pss_kb(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total / 1024


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_mode(src: Path, out: Path, flags: list[str], namespace: bool, model: str | None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "lle_cli", "enhance", str(src), "-o", f"{out}/", "--json", "--no-record", *flags]
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(in_namespace(cmd) if namespace else cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_pss_mb(proc.pid))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    arrivals = []
    for line in proc.stdout:  # one JSON line per finished image
        try:
            status = json.loads(line)["status"]
        except ValueError:
            print(f"    not a JSON line on stdout: {line.rstrip()[:200]}", file=sys.stderr)
            continue
        arrivals.append(time.perf_counter() - t0)
        if status != "ok":
            raise SystemExit(f"{line.strip()}")
    err = proc.stderr.read()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}: {err.strip()[-500:]}")
    n = len(arrivals)
    steady = (n - 1) / (arrivals[-1] - arrivals[0]) if n > 1 and arrivals[-1] > arrivals[0] else None
    return {"images": n, "wall_s": round(wall, 2), "images_per_s": round(n / wall, 3),
            "first_image_s": round(arrivals[0], 2), "steady_images_per_s": round(steady, 3) if steady else None,
            "peak_pss_mb_all_processes": round(peak[0])}


STARTUP_SNIPPET = """
import json, os, sys, time
t0 = time.perf_counter()
from lle_cli import api
from lle_cli.ray_backend import cluster, _Worker
from lle_cli.worker_tasks import EnhanceTask, ModelSpec
model = api.load_model(None, device="cpu")
t1 = time.perf_counter()
with cluster("local", cpus=1) as ray:
    t2 = time.perf_counter()
    actor = ray.remote(_Worker).options(num_cpus=1).remote(ModelSpec.of(model, None), None, 1, None)
    ray.get(actor.ready.remote())
    t3 = time.perf_counter()
t4 = time.perf_counter()
print(json.dumps({"driver_import_and_model_s": round(t1 - t0, 2), "ray_init_s": round(t2 - t1, 2),
                  "actor_with_model_s": round(t3 - t2, 2), "shutdown_s": round(t4 - t3, 2), "total_s": round(t4 - t1, 2)}))
"""


def startup_cost() -> dict[str, Any]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run(in_namespace([sys.executable, "-c", STARTUP_SNIPPET]), capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"start-up measurement failed: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def large_folder(folder: Path, count: int) -> None:
    from PIL import Image

    photos = sorted(p for d in ("backlit", "lowlight_real/LIME") if (SHARED_DATA / d).is_dir()
                    for p in (SHARED_DATA / d).iterdir() if p.suffix.lower() in (".png", ".jpg", ".bmp"))
    if not photos:
        raise SystemExit(f"no photos under {SHARED_DATA}")
    for i in range(count):
        with Image.open(photos[i % len(photos)]) as im:
            im.convert("RGB").resize((2048, 1536), Image.LANCZOS).save(folder / f"big{i:02d}.png", compress_level=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="registry name (default: the embedded default model)")
    p.add_argument("--large", type=int, default=4, help="2048x1536 photos in the second folder (default 4; 0 skips it)")
    p.add_argument("--repeats", type=int, default=1, help="runs per mode and folder; the best is kept (default 1)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)})")
    args = p.parse_args(argv)
    lol = SHARED_DATA / "lol_eval15" / "low"
    if not lol.is_dir():
        raise SystemExit(f"{lol} is missing (see ../shared/data/README.md)")
    try:
        import ray  # noqa: F401
        no_ray = None
    except ImportError:
        no_ray = 'ray is not installed (pip install "lle-cli[ray]")'
    no_ray = no_ray or namespace_problem()
    rows: list[dict[str, Any]] = []
    startup = None
    with tempfile.TemporaryDirectory(prefix="lle-scale-") as tmp:
        big = Path(tmp) / "big"
        big.mkdir()
        folders = [("LOL eval15, 15 x 600x400", lol)]
        if args.large:
            large_folder(big, args.large)
            folders.append((f"{args.large} x 2048x1536", big))
        for name, src in folders:
            for label, flags, namespace in MODES:
                if namespace and no_ray:
                    print(f"  {name}: {label}: skipped ({no_ray})", file=sys.stderr)
                    continue
                best = None
                for rep in range(args.repeats):
                    out = Path(tmp) / f"out-{len(rows)}-{rep}"
                    r = run_mode(src, out, flags, namespace, args.model)
                    shutil.rmtree(out, ignore_errors=True)
                    best = r if best is None or r["wall_s"] < best["wall_s"] else best
                rows.append({"folder": name, "mode": label, **best})
                print(f"  {name}: {label}: {best['images_per_s']:.2f} img/s ({best['wall_s']:.1f} s)", file=sys.stderr)
        if not no_ray:
            startup = startup_cost()

    print(f"{'folder':<26}  {'mode':<34}  img/s  steady img/s  first image s  wall s  peak MB")
    print(f"{'-' * 26}  {'-' * 34}  -----  ------------  -------------  ------  -------")
    for r in rows:
        steady = f"{r['steady_images_per_s']:.2f}" if r["steady_images_per_s"] else "-"
        print(f"{r['folder']:<26}  {r['mode']:<34}  {r['images_per_s']:5.2f}  {steady:>12}  {r['first_image_s']:13.1f}  "
              f"{r['wall_s']:6.1f}  {r['peak_pss_mb_all_processes']:7d}")
    if startup:
        print(f"private Ray cluster: ray.init {startup['ray_init_s']:.1f} s, one actor with the model {startup['actor_with_model_s']:.1f} s, "
              f"shutdown {startup['shutdown_s']:.1f} s (total {startup['total_s']:.1f} s)")
    elif no_ray:
        print(f"Ray rows and start-up cost left out: {no_ray}")
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "cpus": os.cpu_count(), "model": args.model or "embedded default",
        "note": "2-core machine shared with a training job and other workers: absolute figures are low and noisy",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"environment": env, "results": rows, "ray_startup": startup,
                                     "ray_skipped": no_ray}, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
