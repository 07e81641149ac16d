"""The model zoo measured here: quality on LOL and on real photos, speed and size of every registered model.

    python bench/zoo.py [--models NAME ...] [--fresh] [--threads 2] [--repeats 3]
    nohup python bench/zoo.py > bench/results/zoo.log 2>&1 &      # it takes a while on a busy CPU

For each model of the registry whose weights are on this machine (embedded in the package, or the
authors' file in ../shared/upstream/weights whose sha256 is the manifest's), it measures

* LOL eval15 PSNR / SSIM with ``lle eval``'s default protocol (``plain``), fp32 on the CPU: the
  same code path as ``lle eval --model NAME --weights FILE ../shared/data/lol_eval15/low
  ../shared/data/lol_eval15/high``;
* NIQE (BasicSR's, lower is more natural) of its outputs on the real low-light photos: LIME
  (``lowlight_real/LIME``, 9 images) and the backlit set (6), as ``lle eval --model NAME DIR`` does
  without references; ``niqe_real`` is the mean over all 15 images;
* seconds per 600x400 image (a LOL input) with ``--threads`` threads: the median of ``--repeats``
  runs after one warm-up;
* its parameters (counted on the built network).

Models whose weights are not here are listed as skipped, with the reason. A first row, ``input``,
measures the unenhanced inputs (LOL low against high; NIQE of the raw photos) for scale.

Results are written after every model, so an interrupted run resumes where it stopped (``--fresh``
starts over): bench/results/zoo.json (everything, per image) and lle_cli/model_figures.json (the
compact copy that ``lle models list`` shows). A model whose weights or architecture changed since it was
measured is measured again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure the checkout this script sits in, installed or not
sys.path.insert(0, str(ROOT / "bench"))

from enhance import UPSTREAM_DIR, environment  # noqa: E402

from lle_cli import api  # noqa: E402
from lle_cli.errors import LLEError  # noqa: E402
from lle_cli.evaluate import evaluate_model, evaluate_predictions  # noqa: E402
from lle_cli.imageio import read_image  # noqa: E402
from lle_cli.loading import embedded_path, import_checkpoints  # noqa: E402
from lle_cli.registry import ModelEntry, get_registry  # noqa: E402
from lle_cli.weights import sha256_file  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
LOL_LOW, LOL_HIGH = DATA / "lol_eval15" / "low", DATA / "lol_eval15" / "high"
REAL_SETS = {"lime": DATA / "lowlight_real" / "LIME", "backlit": DATA / "backlit"}
TIMING_IMAGE = LOL_LOW / "1.png"  # 600x400
DEFAULT_JSON = ROOT / "bench" / "results" / "zoo.json"
FIGURES = ROOT / "lle_cli" / "model_figures.json"
PROTOCOL = "plain"


def upstream_by_sha256() -> dict[str, Path]:
    """Every file under ../shared/upstream/weights by its sha256: a manifest entry finds its file by
    content, whatever the local name (pairlie.lol shares pairlie.official's checkpoint)."""
    if not UPSTREAM_DIR.is_dir():
        return {}
    return {sha256_file(p): p for p in sorted(UPSTREAM_DIR.rglob("*")) if p.is_file() and p.suffix in (".pth", ".pt", ".ckpt", ".safetensors")}


def _private_cache() -> None:
    """Models imported for a measurement go to a temporary LLE_HOME, not the user's cache."""
    if not os.environ.get("LLE_BENCH_HOME"):
        import tempfile

        os.environ["LLE_BENCH_HOME"] = os.environ["LLE_HOME"] = tempfile.mkdtemp(prefix="lle-zoo-")


def weights_for(entry: ModelEntry, upstream: dict[str, Path]) -> tuple[Path | None, str, str | None]:
    """(file to pass as --weights or None for the embedded weights, description, why skipped or None)."""
    if embedded_path(entry) is not None:
        return None, "embedded", None
    if entry.upstream and entry.upstream.sha256 and entry.upstream.sha256 in upstream:
        path = upstream[entry.upstream.sha256]
        return path, f"upstream {path.relative_to(UPSTREAM_DIR)}", None
    if entry.components:  # several authors' files: imported into this run's private cache, loaded from there
        missing = [c.filename for c in entry.components if c.sha256 not in upstream]
        if missing:
            return None, "", f"the authors' files {', '.join(missing)} are not in {UPSTREAM_DIR}"
        _private_cache()
        import_checkpoints([upstream[c.sha256] for c in entry.components])
        return None, "upstream " + ", ".join(upstream[c.sha256].relative_to(UPSTREAM_DIR).as_posix() for c in entry.components), None
    if entry.upstream and entry.upstream.sha256:
        return None, "", f"the authors' file (sha256 {entry.upstream.sha256[:12]}) is not in {UPSTREAM_DIR}"
    return None, "", "no embedded weights and no authors' file with a known sha256"


def weights_digest(entry: ModelEntry, weights: Path | None) -> str | None:
    """What identifies the measured weights: the file's sha256, the embedded one, or the components'."""
    if weights is not None:
        return sha256_file(weights)
    if entry.components:
        return ",".join(c.sha256 or "" for c in entry.components)
    return entry.embedded_sha256


def seconds_per_image(model: Any, repeats: int) -> float:
    rgb = read_image(TIMING_IMAGE).rgb
    model.enhance(rgb)  # warm-up: allocations, one-time kernel choices
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.enhance(rgb)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _images(report: Any) -> dict[str, dict[str, Any]]:
    return {r.name: {**{k: _clean(v) for k, v in r.metrics.items()}, "error": r.error} for r in report.images}


def _clean(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def real_photos(measure_set: Any) -> dict[str, Any]:
    """NIQE per real-photo set and the mean over all their images."""
    out: dict[str, Any] = {}
    values = []
    for key, folder in REAL_SETS.items():
        rep = measure_set(folder)
        out[f"niqe_{key}"] = _clean(rep.mean["niqe"])
        out[f"images_{key}"] = _images(rep)
        values += [r.metrics["niqe"] for r in rep.images if r.ok and math.isfinite(r.metrics.get("niqe", math.nan))]
        out.setdefault("failed", 0)
        out["failed"] += len(rep.failures)
    out["niqe_real"] = _clean(statistics.fmean(values)) if values else None
    return out


def measure_input() -> dict[str, Any]:
    lol = evaluate_predictions(LOL_LOW, LOL_HIGH, PROTOCOL)
    row = {"name": "input", "weights": "none: the unenhanced inputs", "parameters": 0,
           "lol_psnr": _clean(lol.mean["psnr"]), "lol_ssim": _clean(lol.mean["ssim"]), "images_lol": _images(lol)}
    row.update(real_photos(lambda folder: evaluate_predictions(folder, None, PROTOCOL)))
    return row


def measure_model(entry: ModelEntry, weights: Path | None, source: str, repeats: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = api.load_model(entry.name, weights=weights, device="cpu", precision="fp32", offline=True)
    params = sum(p.numel() for p in model.module.parameters())
    lol = evaluate_model(model, LOL_LOW, LOL_HIGH, PROTOCOL)
    row = {"name": entry.name, "weights": source, "weights_sha256": weights_digest(entry, weights), "architecture": dict(entry.architecture or {}),
           "parameters": params, "parameters_manifest": entry.parameters,
           "lol_psnr": _clean(lol.mean["psnr"]), "lol_ssim": _clean(lol.mean["ssim"]),
           "lol_niqe": _clean(lol.mean["niqe"]), "lol_failed": len(lol.failures), "images_lol": _images(lol)}
    row.update(real_photos(lambda folder: evaluate_model(model, folder, None, PROTOCOL)))
    row["seconds_600x400"] = round(seconds_per_image(model, repeats), 4)
    row["measure_seconds"] = round(time.perf_counter() - t0, 1)
    return row


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (a killed run leaves the previous file whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def figures(results: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    """The compact copy packaged for ``lle models list``: headline numbers only."""
    keep = ("lol_psnr", "lol_ssim", "niqe_real", "niqe_lime", "niqe_backlit", "seconds_600x400", "parameters")
    return {
        "about": "measured by bench/zoo.py; do not edit by hand (run the script again)",
        "date": env["date"],
        "cpu": env["cpu"],
        "threads": env["threads"],
        "protocol": PROTOCOL,
        "lol": "LOL eval15 (15 pairs), lle eval --protocol plain, fp32 on the CPU",
        "niqe_real": "NIQE (BasicSR's; lower is more natural) of the outputs on LIME (9) and the backlit set (6), mean over the 15",
        "models": {name: {k: row.get(k) for k in keep} for name, row in results.items() if "skipped" not in row},
    }


def print_table(results: dict[str, Any], registry: Any) -> None:
    head = f"{'model':26s} {'params':>10s} {'PSNR':>6s} {'SSIM':>6s} {'NIQE LIME':>9s} {'backlit':>8s} {'real':>6s} {'s/600x400':>9s}  licence"
    print(head)
    print("-" * len(head))

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for name, row in results.items():
        if "skipped" in row:
            continue
        lic = registry.models[name].license.split(" (")[0].split(";")[0] if name in registry.models else ""
        print(f"{name:26s} {row['parameters']:>10,d} {f(row.get('lol_psnr'), '.2f'):>6s} {f(row.get('lol_ssim'), '.3f'):>6s} "
              f"{f(row.get('niqe_lime'), '.2f'):>9s} {f(row.get('niqe_backlit'), '.2f'):>8s} {f(row.get('niqe_real'), '.2f'):>6s} "
              f"{f(row.get('seconds_600x400'), '.3f'):>9s}  {lic[:50]}")
    skipped = {n: r["skipped"] for n, r in results.items() if "skipped" in r}
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", help="only these registry names (default: all)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--figures", default=str(FIGURES), help="the compact copy for `lle models list` ('' to skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fresh", action="store_true", help="measure everything again instead of resuming")
    args = ap.parse_args(argv)
    for folder in (LOL_LOW, LOL_HIGH, *REAL_SETS.values()):
        if not folder.is_dir():
            print(f"{folder}: missing; bench/zoo.py needs the shared data folder beside the checkout", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    env = environment(protocol=PROTOCOL, repeats=args.repeats)
    previous = {} if args.fresh or not args.json.is_file() else json.loads(args.json.read_text()).get("results", {})
    if not args.fresh and args.figures and Path(args.figures).is_file():
        # rows measured on an earlier machine whose full JSON is gone: kept for the models not measured now
        # (a model named in --models, or one without a full row, is measured again)
        for name, row in json.loads(Path(args.figures).read_text()).get("models", {}).items():
            previous.setdefault(name, {"name": name, **row, "from_figures": True})
    registry = get_registry()
    names = args.models or list(registry.models)
    unknown = [n for n in names if n not in registry.models and n != "input"]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; see `lle models list`", file=sys.stderr)
        return 2
    upstream = upstream_by_sha256()
    results: dict[str, Any] = dict(previous)

    def save() -> None:
        write_json(args.json, {"environment": env, "results": results})
        if args.figures:
            write_json(Path(args.figures), figures(results, env))

    if "input" not in results and not args.models:
        print("measuring the unenhanced inputs", flush=True)
        results["input"] = measure_input()
        save()
    for name in names:
        if name == "input":
            continue
        entry = registry.models[name]
        weights, source, why = weights_for(entry, upstream)
        if why:
            results[name] = {"name": name, "skipped": why}
            print(f"skip {name}: {why}", flush=True)
            save()
            continue
        sha = weights_digest(entry, weights)
        done = previous.get(name)
        same = done and done.get("weights_sha256") == sha and (done.get("architecture") or {}) == (entry.architecture or {})
        if done and "skipped" not in done and "error" not in done and (same or (done.get("from_figures") and not args.models)):
            print(f"{name}: measured before (resuming; --fresh to redo)", flush=True)
            continue
        print(f"measuring {name} ({source})", flush=True)
        try:
            results[name] = measure_model(entry, weights, source, args.repeats)
        except LLEError as e:
            results[name] = {"name": name, "skipped": f"failed: {e}"}
        r = results[name]
        if "skipped" in r:
            print(f"  {r['skipped']}", flush=True)
        else:
            print(f"  LOL {r['lol_psnr']:.2f} dB / {r['lol_ssim']:.3f}, NIQE real {r['niqe_real']:.3f}, "
                  f"{r['seconds_600x400']:.3f} s per 600x400, {r['parameters']:,d} parameters ({r['measure_seconds']:.0f} s)", flush=True)
        save()
    print()
    print_table(results, registry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
