"""Network time of lle against the inference engines a user would pick instead, on the CPU.

    python bench/vs_engines.py [--families F ...] [--sizes WxH,...] [--repeats N] [--threads T] [--json PATH]

For each family (one model each, as ``bench/enhance.py`` picks them; LLFlow: the embedded
``llflow.lle-synth-rqs``, real weights with the spline couplings) and size, the same weights and
input run through these contenders, all with ``--threads`` threads (default 2):

* **lle**: ``LoadedModel.enhance_tensor`` untiled, float32: the network as ``lle enhance`` runs it
  (channels-last, in-place inference paths, Winograd convolutions for LLFlow), its output clamped.
  Its output is the reference of every difference below.
* **torch eager**: the module ``lle models export`` traces (``lle_cli.export.exportable_module``: the
  models' plain formulation, NCHW, none of lle's inference shortcuts) in eager PyTorch.
* **onnxruntime**: the file ``lle models export --format onnx`` writes, CPUExecutionProvider, every
  graph optimisation, ``--threads`` intra-op threads, one inter-op thread, the memory arena on.
* **openvino fp32**: the same file on OpenVINO's CPU plugin with ``INFERENCE_PRECISION_HINT: f32``,
  reshaped to the image's static size first (OpenVINO compiles faster kernels for static shapes).
* **openvino default**: the same without the hint: the plugin's default precision (bf16 on a CPU
  with AVX512-BF16 or AMX, as the JSON records), which trades accuracy for speed.
* **lle bf16**: ``enhance_tensor`` under ``torch.autocast("cpu", torch.bfloat16)`` (what
  ``--precision auto`` runs for the families bench/precision.py found within one level);
* **lle --runtime onnx / openvino**: ``lle_cli.engines.EngineModel`` on the same file (its own
  session options: ONNX Runtime without the memory arena, OpenVINO fp32 compiled per image size), as
  ``lle enhance --runtime`` runs it (for the flows that includes preparing ``lq`` in numpy, which the
  other contenders are handed ready-made, so the row is on the safe side).

* **lle --runtime openvino bf16**: the same with OpenVINO compiling in bf16, what ``--runtime openvino``
  runs under ``--precision auto`` for the families whose policy is bf16 (or with ``--precision bf16``).

The closing summary (``verdicts`` in the JSON) takes, for each family and size, lle's fastest way to run
it (PyTorch or one of its runtimes) and divides each fp32 engine's median time by that way's; and
OpenVINO's default (bf16) by lle's fastest bf16 way among those within one 8-bit level of float32 on
99.9 % of the pixels (none: no bf16 row for that case).

Network time only: for LLFlow every contender gets the prepared network input ``lq`` (padding, log
image, histogram equalisation are outside the ONNX graph, see the export's sidecar) and decodes the
latent's mean (tau 0); the outputs are cropped and clamped alike. Each contender is built, warmed up
and timed alternately with lle (lle, it, it, lle, ...: ``--repeats`` runs each, the median kept), then
released before the next is built, so that only one engine's working memory is held at a time;
``ratio`` is the contender's median over the median of the lle runs interleaved with it (the same
load for both), ``lle s`` that median, and ``RSS +MiB`` what the process grew by building and
warming it up (ONNX Runtime's arena, OpenVINO's buffers; lle's memory is already counted).
``max_abs_diff`` is against lle's float32 output; for the reduced-precision contenders the difference
is also given in 8-bit levels (round(255 x)): the largest, and the fraction of pixels whose three
channels are all within one level.

Memory: ``bench_model`` keeps freed memory as ``lle`` does (glibc serves every block from a heap it
never trims), and each contender's freed heap is handed back before the next is built. On a 24 GB
machine that is still not enough for the attention networks at 2048x1536: ONNX Runtime with its
arena was killed at 24 GB alternating with lle on Retinexformer (with freed memory kept, and with
``LLE_KEEP_FREED_MEMORY=0``; one pass alone peaks at 15 GB) and on CIDNet, and so was lle's
arena-less ``--runtime onnx`` on Retinexformer, alternating with lle's 4.4 GB PyTorch passes on the
kept heap. Leaving the allocator alone is no way round: lle's PyTorch passes then fault their
memory in afresh and take 2.8x as long (50.7 s against 18.3). ``--contenders`` times the others;
the JSON records ``keep_freed_memory``.

The input is ``lle_cli.export.check_image`` at each size (a dim textured scene in 8-bit steps).
The load average before and after is recorded: on a machine that other jobs share, the absolute
times mean little and the ratios somewhat more. Needs the onnx extra (``pip install '.[onnx]'``);
OpenVINO is optional (``pip install '.[openvino]'``), its rows are skipped without it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark the checkout this script sits in, installed or not
sys.path.insert(0, str(ROOT / "bench"))

from enhance import environment, load_for_bench, parse_sizes, pick_entry, write_results  # noqa: E402

from lle_cli.export import _FlowGraph, _ImageGraph, check_image, export_onnx, exportable_module, require_onnx  # noqa: E402
from lle_cli.models import FAMILIES  # noqa: E402
from lle_cli.registry import get_registry  # noqa: E402
from lle_cli.runner import LoadedModel  # noqa: E402

DEFAULT_JSON = ROOT / "bench" / "results" / "vs_engines.json"
DEFAULT_SIZES = "600x400,2048x1536"
DEFAULT_FAMILIES = ["iat", "zero_dce", "illumination_unet", "llflow"]
# LLFlow: the embedded model with real weights (the published ones are not in ../shared), whose
# spline couplings are the flow ops an engine must fuse
PREFERRED = {"llflow": "llflow.lle-synth-rqs"}

Run = Callable[[], np.ndarray]  # one network pass -> (3, H, W) float32, cropped and clamped


def bench_model(family: str) -> LoadedModel:
    reg = get_registry()
    name = PREFERRED.get(family)
    entry = reg.models[name] if name in reg.models else pick_entry(family)
    model = load_for_bench(entry)
    # as api.load_model prepares it: channels-last where the family asks for it
    from lle_cli._cpu import keep_freed_memory, prepare_for_inference

    keep_freed_memory()  # what the lle command does at start-up
    prepare_for_inference(model.module, model.spec.channels_last, model.device)
    model.tile = 0  # network time: untiled
    return model


class Case:
    """One model at one size: its inputs for every contender, and the contenders' single passes."""

    def __init__(self, model: LoadedModel, onnx_path: Path, width: int, height: int, threads: int) -> None:
        self.model, self.path, self.threads = model, onnx_path, threads
        self.x = check_image(height, width)
        self.flow = model.spec.samples
        if self.flow:
            m = model.module
            with torch.inference_mode():
                self.lq, self.pad = m.prepare(self.x)
                self.noise = torch.zeros_like(m.latent_mean(m.condition(self.lq)))  # tau 0: the mean
            self.feeds = {"lq": self.lq.numpy(), "noise": self.noise.numpy()}
        else:
            self.feeds = {"image": self.x.numpy()}

    def _finish(self, y: torch.Tensor | np.ndarray) -> np.ndarray:
        y = torch.as_tensor(y)
        if self.flow:
            y = self.pad.crop(y)
        return y[0].float().clamp(0.0, 1.0).numpy()

    def lle(self, autocast: bool = False) -> Run:
        model, m = self.model, self.model.module
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

        if self.flow:
            def run() -> np.ndarray:
                with ctx(), torch.inference_mode():
                    features = m.condition(self.lq)
                    y, _ = m.decode(features, m.latent_mean(features))
                return self._finish(y)
        else:
            def run() -> np.ndarray:
                with ctx():
                    return model.enhance_tensor(self.x)[0].numpy()
        return run

    def runtime(self, engine: str, dtype: str = "float32") -> Run:
        """``lle enhance --runtime onnx|openvino``: lle's EngineModel (its padding, the engine, the checks)
        on the same exported file, from the (H, W, 3) image lle's batch hands it; ``dtype`` "bfloat16":
        OpenVINO compiled in bf16 (``--runtime openvino --precision bf16``, or auto where the family allows)."""
        from lle_cli.engines import EngineModel

        sidecar = json.loads(self.path.with_name(self.path.name + ".json").read_text())
        model = EngineModel(self.model.entry, engine, self.path, sidecar, self.model.weights_source, threads=self.threads,
                            dtype=dtype)
        rgb = np.ascontiguousarray(self.x[0].permute(1, 2, 0).numpy())  # as a decoded photo arrives: (H, W, 3)
        return lambda: model.enhance(rgb).transpose(2, 0, 1)

    def eager(self) -> Run:
        net = (_FlowGraph if self.flow else _ImageGraph)(exportable_module(self.model.module)).eval()
        args = (self.lq, self.noise) if self.flow else (self.x,)

        def run() -> np.ndarray:
            # autograd on selects the plain formulation; nothing requires grad, so no graph is kept
            with torch.enable_grad():
                return self._finish(net(*args).detach())
        return run

    def onnxruntime(self) -> Run:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        return lambda: self._finish(session.run(None, self.feeds)[0])

    def openvino(self, precision: str | None) -> tuple[Run, str]:
        import openvino as ov

        core = ov.Core()
        net = core.read_model(str(self.path))
        net.reshape({k: list(v.shape) for k, v in self.feeds.items()})
        config = {"INFERENCE_NUM_THREADS": self.threads}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        compiled = core.compile_model(net, "CPU", config)
        request = compiled.create_infer_request()
        chosen = str(compiled.get_property("INFERENCE_PRECISION_HINT")).removeprefix("<Type: '").removesuffix("'>")

        def run() -> np.ndarray:
            request.infer(self.feeds)
            return self._finish(request.get_output_tensor(0).data.copy())
        return run, chosen


def levels(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """The difference in 8-bit levels: the largest, and the share of pixels within one level in every channel."""
    d = np.abs(np.round(out * 255.0) - np.round(ref * 255.0))
    return {"max_levels": float(d.max()), "within_1_level": float((d.max(axis=0) <= 1).mean())}


def rss_mib() -> float:
    """This process's resident memory now (Linux; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def release_memory() -> None:
    """Collect, then hand the heap's free pages back to the system: with freed memory kept (as
    ``lle`` keeps it) one contender's peak stayed resident under the next one's, torch eager's 11 GB
    under ONNX Runtime's 14 GB arena on Retinexformer at 2048x1536."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def available_mib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def alternate(pair: dict[str, Run], repeats: int) -> dict[str, list[float]]:
    """``repeats`` timed runs of each, interleaved (a b b a a b ...) after the warm-up."""
    times: dict[str, list[float]] = {name: [] for name in pair}
    order = list(pair)
    for r in range(repeats):
        for name in order if r % 2 == 0 else reversed(order):
            t0 = time.perf_counter()
            pair[name]()
            times[name].append(time.perf_counter() - t0)
    return times


CONTENDERS = ("torch eager", "onnxruntime", "openvino fp32", "openvino default", "lle bf16", "lle --runtime onnx",
              "lle --runtime openvino", "lle --runtime openvino bf16")


def bench_case(model: LoadedModel, onnx_path: Path, width: int, height: int, threads: int, repeats: int,
               openvino: bool, min_free_mib: float, only: tuple[str, ...] = CONTENDERS) -> list[dict[str, Any]]:
    """Each contender is built, timed alternately with lle, and released before the next is built: an
    engine's working memory at 2048x1536 runs to gigabytes (ONNX Runtime's arena, OpenVINO's static
    buffers), and holding all of them at once exhausted a 23 GB machine."""
    case = Case(model, onnx_path, width, height, threads)
    builders: dict[str, Callable[[], tuple[Run, str]]] = {
        "torch eager": lambda: (case.eager(), "float32"),
        "onnxruntime": lambda: (case.onnxruntime(), "float32"),
    }
    if openvino:
        builders["openvino fp32"] = lambda: case.openvino("f32")
        builders["openvino default"] = lambda: case.openvino(None)
    builders["lle bf16"] = lambda: (case.lle(autocast=True), "bfloat16 (autocast)")
    builders["lle --runtime onnx"] = lambda: (case.runtime("onnx"), "float32")  # `lle enhance --runtime`
    if openvino:
        builders["lle --runtime openvino"] = lambda: (case.runtime("openvino"), "float32")
        builders["lle --runtime openvino bf16"] = lambda: (case.runtime("openvino", "bfloat16"), "bfloat16")
    assert set(builders) <= set(CONTENDERS)
    builders = {k: v for k, v in builders.items() if k in only}
    lle = case.lle()
    ref = lle()  # warm-up, and the reference output
    lle_times: list[float] = []
    rows = []
    for name, build in builders.items():
        if available_mib() < min_free_mib:
            print(f"  {name}: skipped, only {available_mib():.0f} MiB of memory available", file=sys.stderr)
            continue
        before = rss_mib()
        try:
            run, precision = build()
            out = run()  # warm-up
        except Exception as exc:  # one contender that cannot run this model must not lose the others' rows
            print(f"  {name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            rows.append({"contender": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
            release_memory()
            continue
        held = rss_mib() - before
        times = alternate({"lle": lle, name: run}, repeats)
        lle_times += times["lle"]
        finite = bool(np.isfinite(out).all())
        rows.append({
            "contender": name, "precision": precision, "repeats": repeats, "times_s": [round(t, 4) for t in times[name]],
            "median_s": round(statistics.median(times[name]), 4),
            # against lle's runs interleaved with this contender's: the same load for both
            "lle_median_s": round(statistics.median(times["lle"]), 4),
            "ratio": round(statistics.median(times[name]) / statistics.median(times["lle"]), 3),
            "rss_growth_mib": round(held, 1),
            "max_abs_diff": float(np.abs(out.astype(np.float64) - ref).max()) if finite else None,
            "finite": finite,
            **(levels(out, ref) if finite else {}),
        })
        print(f"  {name}: {rows[-1]['median_s']} s against lle's {rows[-1]['lle_median_s']} s", file=sys.stderr)
        del run, out
        release_memory()
    lle_row = {"contender": "lle", "precision": "float32", "repeats": len(lle_times), "times_s": [round(t, 4) for t in lle_times],
               "median_s": round(statistics.median(lle_times), 4) if lle_times else None, "ratio": 1.0,
               "max_abs_diff": 0.0, "finite": True, **levels(ref, ref)}
    common = {"family": model.entry.family, "model": model.name, "weights": model.weights_source, "size": f"{width}x{height}"}
    return [{**common, **r} for r in [lle_row, *rows]]


LLE_WAYS = ("lle", "lle --runtime onnx", "lle --runtime openvino")  # what `lle enhance` can run a family with
ENGINES_FP32 = ("onnxruntime", "openvino fp32")
LLE_BF16_WAYS = ("lle bf16", "lle --runtime openvino bf16")  # --precision auto's bf16, in PyTorch or OpenVINO
BF16_WITHIN1 = 0.999  # lle_cli.device.AUTO_BF16_WITHIN1: where a bf16 way counts at all


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per family and size: lle's fastest way (PyTorch or one of its runtimes) against each fp32 engine,
    ``ratio`` = engine median / that way's median (>= 1: lle as fast or faster). Plain medians, all
    taken in the same process within minutes: scaling each by the lle runs interleaved with it was
    tried and amplified the noise (one engine's arena growth slowed the lle runs beside it 2x)."""
    out = []
    for key in dict.fromkeys((r["family"], r["size"]) for r in rows):
        case = {r["contender"]: r["median_s"] for r in rows if (r["family"], r["size"]) == key and r.get("median_s")}
        ways = {k: v for k, v in case.items() if k in LLE_WAYS}
        best = min(ways, key=ways.get)
        for engine in ENGINES_FP32:
            if engine in case:
                out.append({"family": key[0], "size": key[1], "engine": engine, "lle_way": best,
                            "engine_s": case[engine], "lle_s": ways[best], "ratio": round(case[engine] / ways[best], 3)})
        # bf16: lle's fastest bf16 way that stays within one level, against OpenVINO's own default (bf16)
        close = {r["contender"]: r["median_s"] for r in rows if (r["family"], r["size"]) == key and r.get("median_s")
                 and r["contender"] in LLE_BF16_WAYS and r.get("within_1_level", 0) >= BF16_WITHIN1}
        if close and "openvino default" in case:
            way = min(close, key=close.get)
            out.append({"family": key[0], "size": key[1], "engine": "openvino default", "lle_way": way,
                        "engine_s": case["openvino default"], "lle_s": close[way],
                        "ratio": round(case["openvino default"] / close[way], 3)})
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [("family", "family"), ("size", "size"), ("contender", "contender"), ("precision", "precision"),
            ("median_s", "median s"), ("lle_median_s", "lle s"), ("ratio", "ratio"), ("rss_growth_mib", "RSS +MiB"),
            ("max_abs_diff", "max |diff|"),
            ("max_levels", "max levels"), ("within_1_level", "within 1 level")]

    def fmt(k: str, v: Any) -> str:
        if v is None:
            return "-"
        if k == "max_abs_diff":
            return f"{v:.1e}"
        if k == "within_1_level":
            return f"{100 * v:.3f}%"
        if k == "rss_growth_mib":
            return f"{v:.0f}"
        if k == "max_levels":
            return f"{v:.0f}"
        return str(v)

    cells = [[fmt(k, r.get(k)) for k, _ in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
    for line in [[h for _, h in cols], ["-" * w for w in widths], *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=DEFAULT_FAMILIES,
                   help=f"default: {' '.join(DEFAULT_FAMILIES)}")
    p.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES, help=f"comma-separated WIDTHxHEIGHT (default {DEFAULT_SIZES})")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per contender after one warm-up (default 5)")
    p.add_argument("--threads", type=int, default=2, help="threads for every contender (default 2)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)})")
    p.add_argument("--min-free-mb", type=float, default=4096,
                   help="skip a contender when less memory than this is available (other jobs share the machine; default 4096)")
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS), metavar="NAME",
                   help="time only these beside lle (default: all; quote names with spaces: " + ", ".join(CONTENDERS) + ")")
    p.add_argument("--append", action="store_true",
                   help="keep the file's rows for the families and sizes this run does not measure (a short run adds to a longer one)")
    args = p.parse_args(argv)
    if isinstance(args.sizes, str):
        args.sizes = parse_sizes(args.sizes)
    if args.repeats < 5:
        p.error("--repeats must be at least 5 (medians of fewer runs are noise on a shared machine)")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    require_onnx()
    try:
        import openvino
        ov_version = openvino.__version__ if hasattr(openvino, "__version__") else openvino.get_version()
    except ImportError:
        ov_version = None
        print("openvino is not installed: its rows are skipped (pip install '.[openvino]')", file=sys.stderr)
    import onnxruntime

    from lle_cli._cpu import keep_freed_memory

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    env = environment(onnxruntime=onnxruntime.__version__, openvino=ov_version, cpus=os.cpu_count(),
                      load_average_before=[round(v, 2) for v in load_before],
                      keep_freed_memory=keep_freed_memory())  # bench_model sets it; whether it took
    print(f"torch {env['torch']}, {args.threads} threads, {env['cpu']}; load average {load_before[0]:.2f} on "
          f"{os.cpu_count()} CPUs{' (a loaded machine: ratios matter more than times)' if load_before[0] > 0.5 else ''}",
          file=sys.stderr)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lle-vs-engines-") as tmp:
        for family in args.families:
            model = bench_model(family)
            export = export_onnx(model, tmp)
            print(f"{family}: {model.name} ({model.weights_source}); exported, max |diff| {export.max_abs_diff:.1e}",
                  file=sys.stderr)
            for w, h in args.sizes:
                rows.extend(bench_case(model, export.path, w, h, args.threads, args.repeats, ov_version is not None,
                                       args.min_free_mb, tuple(args.contenders)))
                print(f"  {w}x{h} done", file=sys.stderr)
            del model

    load_after = os.getloadavg()
    env["load_average_after"] = [round(v, 2) for v in load_after]
    env["note"] = (f"load average {load_before[0]:.2f} before and {load_after[0]:.2f} after on {os.cpu_count()} CPUs: "
                   "other jobs shared the machine, so times are slower and noisier than on a quiet one")
    print_table(rows)
    print(env["note"])
    summary = verdicts(rows)
    print("\nfastest way lle runs each family against the fp32 engines (ratio = engine time / lle's; >= 1: lle as fast or faster)")
    for v in summary:
        print(f"  {v['family']:18s} {v['size']:>10s}  {v['engine']:14s} vs {v['lle_way']:24s} {v['ratio']:.3f}")
    runs = [env]
    if args.append and args.json.is_file():
        old = json.loads(args.json.read_text())
        done = {(r["family"], r["size"]) for r in rows}
        rows = [r for r in old["results"] if (r["family"], r["size"]) not in done] + rows
        previous = old["environment"]
        runs = (previous if isinstance(previous, list) else [previous]) + runs
    env_out = runs[0] if len(runs) == 1 else runs
    write_results(args.json, env_out, rows)
    data = json.loads(args.json.read_text())
    data["verdicts"] = verdicts(rows)
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
