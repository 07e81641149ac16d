"""Run a model's ONNX export in ONNX Runtime or OpenVINO instead of PyTorch (``--runtime onnx|openvino``).

The first run of a model with an engine exports it (``lle_cli.export``: PyTorch, once, checked
against lle's own output) into the cache, keyed by the sha256 of the weights it was made from:
``$LLE_HOME/exports/<model>/<sha256[:16]>-<digest>/<model>.onnx`` and its sidecar (the digest
covers the manifest's architecture and lle's version). Every later run reads
that file without importing PyTorch at all, which is most of a one-shot command's start-up
(bench/startup.py): the registry is parsed without the model code, the weights' identity is checked
against the export's sidecar, the ONNX file against the sha256 the sidecar recorded, and the
padding the runner would do (``tiling.pad_amounts``, reflect or edge) is done here in numpy from
the sidecar's ``multiple_of`` and ``min_size``.

The conditional flows (LLFlow) export their encoder and inverse flow with the network input ``lq``
as the graph's input; for ``lle enhance`` the engine path prepares it here in numpy exactly as
``lle_cli.models.llflow.preprocess`` does (symmetric padding, log image, OpenCV's ``equalizeHist``)
and decodes the latent's mean (zero noise), as lle's enhance does.

Precision: ONNX Runtime runs float32 (within 1e-4 of lle). OpenVINO runs float32 too, except where
``--precision auto`` would run the family in bf16 in PyTorch (the export's ``auto_cpu_bf16``, from
bench/precision.py) on a CPU with native bf16, or ``--precision bf16`` asks for it: the graph is then
compiled in bf16, OpenVINO's own fast path (its default on such a CPU), and the run record says so.

What an engine does not do: tile (the graph runs the whole image, so memory grows with it), sampling
(``lle sample`` runs in PyTorch), and the LLFlow out-of-distribution warning (it needs the encoder's
features in PyTorch).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import cache
from .digest import sha256_file
from .errors import InputError, NonFiniteError, UsageError, WeightsError
from .extras import require_extra
from .registry import ModelEntry, get_registry
from .tiling import pad_amounts, reflect_fits

__all__ = ["RUNTIMES", "ENGINE_RUNTIMES", "EngineModel", "load_engine_model", "exports_dir", "check_runtime_options",
           "engine_precision"]

RUNTIMES = ("torch", "onnx", "openvino")
ENGINE_RUNTIMES = ("onnx", "openvino")
_EXTRA = {"onnx": ("onnx", "onnxruntime"), "openvino": ("openvino", "openvino")}  # runtime: (extra, module)
IMAGE_GRAPH = "image -> enhanced"  # the sidecar's "graph" (lle_cli.export)
FLOW_GRAPH = "conditional flow: (lq, noise) -> image"
_KEEP_COMPILED = 2  # OpenVINO: compiled networks kept for this many image sizes (a batch's sizes repeat)


def exports_dir() -> Path:
    return cache.lle_home() / "exports"


def check_runtime_options(runtime: str, *, device: str, precision: str, tile: int | None, workers: bool) -> None:
    """Refuse, before any work, what an engine cannot do (UsageError naming the option to change)."""
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return
    if device.lower() not in ("auto", "cpu"):
        raise UsageError(f"--runtime {runtime} runs on the CPU; pass --device cpu or leave out --runtime")
    if runtime == "openvino" and precision.lower() not in ("auto", "fp32", "bf16"):
        raise UsageError(f"--runtime {runtime} runs in float32 or bf16; pass --precision fp32 or bf16, or leave out --runtime")
    if runtime == "onnx" and precision.lower() not in ("auto", "fp32"):
        raise UsageError(f"--runtime {runtime} runs in float32; pass --precision fp32 or leave out --runtime")
    if tile:
        raise UsageError(f"--runtime {runtime} runs the whole image (no tiles); leave out --tile or leave out --runtime")
    if workers:
        raise UsageError(f"--runtime {runtime} runs in this process; leave out --workers/--ray or leave out --runtime")


def _weights_sha256(entry: ModelEntry, weights: Path | None) -> str | None:
    """The sha256 of the weights a PyTorch run would load, or None when they are not here yet."""
    if weights is not None:
        if not Path(weights).is_file():
            raise WeightsError(f"{weights}: no such weights file")
        return sha256_file(Path(weights))
    if entry.embedded:
        return entry.embedded_sha256
    path = cache.cached_weights_path(entry.name)
    return sha256_file(path) if path.is_file() else None


def _export_key(entry: ModelEntry, weights_sha256: str) -> str:
    """The cache folder of an export: the weights' sha256, and a digest of what else shapes the graph
    (the architecture in the manifest, lle's version: its model code), so an upgrade exports anew."""
    import hashlib

    from . import __version__

    shape = json.dumps({"architecture": entry.architecture, "lle": __version__}, sort_keys=True)
    return f"{weights_sha256[:16]}-{hashlib.sha256(shape.encode()).hexdigest()[:8]}"


@dataclass
class EngineModel:
    """A model's ONNX export in an engine, with the part of ``runner.LoadedModel`` that ``lle
    enhance``'s batch uses: ``name``, ``entry``, ``enhance``, ``enhance_batch``, ``tile`` (0: never)."""

    entry: ModelEntry
    runtime: str  # "onnx" or "openvino"
    onnx_path: Path
    sidecar: dict[str, Any]
    weights_source: str
    threads: int
    tile: int | None = 0
    autocast: bool = False
    device: str = "cpu"
    dtype: str = "float32"  # "bfloat16": OpenVINO compiles the graph in bf16 (``engine_precision``)
    _run: Callable[[dict[str, np.ndarray]], np.ndarray] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def runtime_info(self) -> dict[str, Any]:
        engine = "onnxruntime" if self.runtime == "onnx" else "openvino"
        mod = sys.modules.get(engine)
        version = getattr(mod, "__version__", None) or getattr(getattr(mod, "runtime", None), "get_version", lambda: None)()
        return {"engine": engine, "version": version, "onnx": str(self.onnx_path), "onnx_sha256": self.sidecar["onnx"]["sha256"],
                "export_max_abs_diff": self.sidecar["check"]["max_abs_diff"], "threads": self.threads,
                "precision": "bf16" if self.dtype == "bfloat16" else "f32"}

    def enhance(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1] -> enhanced (H, W, 3) float32 in [0, 1]."""
        h, w = rgb.shape[:2]
        if self._channels_last:
            return self._enhance_channels_last(rgb)
        x = np.ascontiguousarray(rgb, dtype=np.float32).transpose(2, 0, 1)[None]
        if self.sidecar["graph"] == FLOW_GRAPH:
            feeds, (top, left) = flow_feeds(x, self.sidecar)
        else:
            x, (top, left) = self._padded(x, h, w, axes=(2, 3))
            feeds = {"image": np.ascontiguousarray(x)}
        y = self._engine()(feeds)[0, :, top : top + h, left : left + w]
        if not np.isfinite(y).all():  # before the clamp, which would turn an Inf into 1
            raise NonFiniteError(f"model {self.name} produced NaN/Inf values in {self.runtime}; try --runtime torch")
        out = np.empty((h, w, 3), np.float32)
        np.clip(y.transpose(1, 2, 0), 0.0, 1.0, out=out)  # one pass: layout, clamp and the copy out of the engine
        return out

    @property
    def _channels_last(self) -> bool:
        # OpenVINO takes the photo as it is decoded (H, W, 3) and gives it back so: the layout change
        # runs inside its first and last layers instead of two strided numpy copies (20 ms at 3 MP,
        # a quarter of Zero-DCE++'s whole run; bench/vs_engines.py)
        return self.runtime == "openvino" and self.sidecar["graph"] == IMAGE_GRAPH

    def _padded(self, x: np.ndarray, h: int, w: int, axes: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
        """``x`` padded along its (height, width) ``axes`` as the runner pads (the sidecar's multiple and
        minimum size; torch's 'reflect' is numpy's, edge replication where the image is too small),
        and the (top, left) to crop the output by."""
        size = self.sidecar["size"]
        top, bottom = pad_amounts(h, size["multiple_of"], size["min_size"])
        left, right = pad_amounts(w, size["multiple_of"], size["min_size"])
        if top or bottom or left or right:
            widths = [(0, 0)] * x.ndim
            widths[axes[0]], widths[axes[1]] = (top, bottom), (left, right)
            x = np.pad(x, widths, mode="reflect" if reflect_fits(h, w, top, bottom, left, right) else "edge")
        return x, (top, left)

    def _enhance_channels_last(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        x, (top, left) = self._padded(np.ascontiguousarray(rgb, dtype=np.float32)[None], h, w, axes=(1, 2))
        y = self._engine()({"image": x})[0, top : top + h, left : left + w]
        if not np.isfinite(y).all():  # before the clamp, which would turn an Inf into 1
            raise NonFiniteError(f"model {self.name} produced NaN/Inf values in {self.runtime}; try --runtime torch")
        out = np.empty((h, w, 3), np.float32)
        np.clip(y, 0.0, 1.0, out=out)
        return out

    def enhance_batch(self, frames: np.ndarray) -> np.ndarray:
        return np.stack([self.enhance(f) for f in frames])

    def _engine(self) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        if self._run is None:
            if self.runtime == "onnx":
                self._run = _onnxruntime(self.onnx_path, self.threads)
            else:
                self._run = _openvino(self.onnx_path, self.threads, "bf16" if self.dtype == "bfloat16" else "f32",
                                      channels_last=self._channels_last)
        return self._run


def _onnxruntime(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # its notes on unused initialisers are not the user's business
    # Without the arena, memory goes back after each image: with it, ONNX Runtime kept 15.6 GB after
    # one 2048x1536 UNet pass (bench/vs_engines.py), and a batch of varied sizes keeps growing it.
    opts.enable_cpu_mem_arena = False
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def _openvino(path: Path, threads: int, precision: str = "f32", *, channels_last: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """``run(feeds) -> output`` in OpenVINO; ``channels_last``: the image graph's input and output in
    (1, H, W, 3), the layout change compiled into the network."""
    import openvino as ov

    core = ov.Core()
    network = core.read_model(str(path))
    if channels_last:
        ppp = ov.preprocess.PrePostProcessor(network)
        ppp.input("image").tensor().set_layout(ov.Layout("NHWC"))
        ppp.input("image").model().set_layout(ov.Layout("NCHW"))
        ppp.output(0).tensor().set_layout(ov.Layout("NHWC"))
        ppp.output(0).model().set_layout(ov.Layout("NCHW"))
        network = ppp.build()
    compiled: dict[tuple[int, ...], Any] = {}
    # always explicit: OpenVINO's default on a CPU with bf16 is bf16, several 8-bit levels from lle's
    # output for some families; "bf16" only where engine_precision allows it
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        shape = tuple((k, v.shape) for k, v in feeds.items())
        if shape not in compiled:
            # a static shape compiles faster kernels than the dynamic graph (bench/vs_engines.py)
            while len(compiled) >= _KEEP_COMPILED:
                compiled.pop(next(iter(compiled)))
            network.reshape({k: list(v.shape) for k, v in feeds.items()})
            model = core.compile_model(network, "CPU", config)
            compiled[shape] = model.create_infer_request()
        request = compiled[shape]
        request.infer(feeds)
        return request.get_output_tensor(0).data

    return run


# -- LLFlow's network input in numpy (lle_cli.models.llflow.preprocess, operation for operation) ------


def _equalize_hist(u8: np.ndarray) -> np.ndarray:
    """OpenCV's ``equalizeHist`` of one (H, W) uint8 plane, as ``preprocess.equalize_hist`` computes it
    (float32 scale, rounding half to even, a one-valued plane kept)."""
    hist = np.bincount(u8.ravel(), minlength=256)
    i0 = int(np.argmax(hist > 0))
    rest = u8.size - int(hist[i0])
    if rest == 0:
        return u8.copy()
    counted = np.clip(np.cumsum(hist) - np.cumsum(hist)[i0], 0, None)
    scale = np.float32(255.0) / np.float32(rest)
    lut = np.clip(np.rint(counted.astype(np.float32) * scale), 0, 255).astype(np.uint8)
    return lut[u8]


def flow_feeds(x: np.ndarray, sidecar: dict[str, Any]) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """(1, 3, H, W) float32 in [0, 1] -> the flow graph's ``lq`` and zero ``noise`` (the latent's mean:
    ``lle enhance``), and the (top, left) padding to crop the output by."""
    pre = sidecar["preprocessing"]
    m = int(sidecar["size"]["multiple_of"])
    h, w = x.shape[-2:]
    top, left = (m - h % m) // 2, (m - w % m) // 2
    bottom, right = (m - h % m) - top, (m - w % m) - left
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode="symmetric")
    parts = [np.log(np.maximum(padded + np.float32(1e-3), np.float32(1e-3)))]
    if pre["histogram_equalisation"]:
        u8 = np.round(np.clip(padded, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
        eq = np.stack([_equalize_hist(u8[0, c]) for c in range(u8.shape[1])])[None]
        parts.append(eq.astype(np.float32) / np.float32(255.0))
    lq = np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)
    latent = sidecar["latent"]
    down = int(latent["downscale"])
    noise = np.zeros((1, int(latent["channels"]), lq.shape[2] // down, lq.shape[3] // down), np.float32)
    return {"lq": lq, "noise": noise}, (top, left)


def _read_export(folder: Path, name: str) -> tuple[Path, dict[str, Any]] | None:
    """The cached export in ``folder`` when its sidecar reads and its ONNX file has the sha256 the
    sidecar recorded; None otherwise (not made yet, or damaged: made again)."""
    onnx, sidecar = folder / f"{name}.onnx", folder / f"{name}.onnx.json"
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        if sha256_file(onnx) == info["onnx"]["sha256"]:
            return onnx, info
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _make_export(entry: ModelEntry, folder: Path, weights: Path | None, offline: bool, progress: Any, say: Callable[[str], None]) -> None:
    """Export with PyTorch into ``folder`` (replacing whatever is there)."""
    from .api import load_model
    from .export import export_onnx

    say(f"exporting {entry.name} to ONNX for the engine (once; kept in {folder})")
    model = load_model(entry.name, weights=weights, device="cpu", precision="fp32", offline=offline, progress=progress, tile=0)
    if folder.exists():
        shutil.rmtree(folder)
    export_onnx(model, folder, overwrite=True)


def engine_precision(runtime: str, precision: str, sidecar: dict[str, Any]) -> str:
    """The dtype an engine runs an export in: "bfloat16" for OpenVINO with ``--precision bf16``, or with
    ``auto`` where the family's measured policy allows bf16 (the sidecar's ``auto_cpu_bf16``) on a CPU
    with native bf16; "float32" otherwise (ONNX Runtime always)."""
    from . import cpu_features

    p = (precision or "auto").lower()
    if runtime != "openvino" or p == "fp32":
        return "float32"
    if p == "bf16" or (sidecar.get("auto_cpu_bf16") and cpu_features.cpu_has_native_bf16()):
        return "bfloat16"
    return "float32"


def load_engine_model(
    name: str | None,
    runtime: str,
    *,
    precision: str = "auto",
    weights: str | os.PathLike | None = None,
    offline: bool = False,
    progress: Any = None,
    threads: int | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> EngineModel:
    """``name`` (None: the default) ready to run in ``runtime`` ("onnx" or "openvino"), exporting it
    into the cache first if no valid export of these weights is there."""
    if runtime not in ENGINE_RUNTIMES:
        raise UsageError(f"--runtime {runtime!r}: the engines are {', '.join(ENGINE_RUNTIMES)}")
    extra, module = _EXTRA[runtime]
    require_extra(extra, module, f"--runtime {runtime}")
    entry = get_registry(check_architectures=False).resolve(name)
    wpath = Path(weights) if weights else None
    sha = _weights_sha256(entry, wpath)
    if sha is None:  # weights still to download: PyTorch's loader fetches and verifies them, then the sha is known
        from .loading import fetch_weights

        sha = fetch_weights(get_registry().resolve(entry.name), offline=offline, progress=progress).sha256
    folder = exports_dir() / entry.name / _export_key(entry, sha)
    with cache.lock(f"export-{entry.name}"):
        found = _read_export(folder, entry.name)
        if found is None:
            if folder.exists():
                say(f"{folder}: the cached export is incomplete or damaged; making it again")
            _make_export(entry, folder, wpath, offline, progress, say)
            found = _read_export(folder, entry.name)
            if found is None:
                raise WeightsError(f"{folder}: the export could not be read back; remove {exports_dir()} and run again")
    onnx, info = found
    if info.get("weights", {}).get("sha256") not in (sha, None):
        raise WeightsError(f"{onnx}: made from other weights than {entry.name}'s; remove {folder} and run again")
    if info.get("graph") not in (IMAGE_GRAPH, FLOW_GRAPH):
        raise InputError(f"{onnx}: a graph this lle does not know ({info.get('graph')!r}); remove {folder} and run again")
    from ._threads import available_cpus

    source = "embedded" if wpath is None and entry.embedded else str(wpath or cache.cached_weights_path(entry.name))
    return EngineModel(entry, runtime, onnx, info, source, threads or available_cpus(),
                       dtype=engine_precision(runtime, precision, info))
