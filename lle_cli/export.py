"""ONNX export: a model's network as one ``.onnx`` file (weights inside) and a JSON sidecar.

The file runs without PyTorch (ONNX Runtime, OpenVINO, browsers, phones), so everything the runner
does around the network that a deployment has to do itself is written down in the sidecar
(``<name>.onnx.json``): input layout and range, padding, what is and is not in the graph, the
model's licence and weights checksum, and the largest difference between the file (run in ONNX
Runtime) and lle's own output on a check image, measured at export time. An export that differs by
more than ``TOLERANCE`` fails and writes nothing.

Two kinds of graph, chosen by the family's descriptor (``FamilySpec.samples``):

* image -> image (every family that maps a photo to one enhancement): input ``image``
  (1, 3, H, W) float32 RGB in [0, 1], output ``enhanced`` of the same shape, clamped to [0, 1]
  as lle clamps it; H and W are dynamic;
* the conditional flows (LLFlow): the encoder and the inverse flow, so a sampler can feed noise.
  Inputs ``lq`` (1, C, Hp, Wp), the network input after the flow's own preprocessing (padding, log
  image, histogram equalisation: not in the graph, as histogram equalisation is a global, integer
  operation ONNX expresses poorly), and ``noise`` (n, 192, Hp/8, Wp/8); output ``image``
  (n, 3, Hp, Wp), unclamped, the decoding of ``z = mean(lq) + noise``. ``noise = tau * eps + offset``
  is ``lle sample``'s latent; zeros give ``lle enhance``'s output (the mean, tau 0).

The graph is traced with autograd on, so each model's plain (training-mode) formulation is exported
rather than its inference-only shortcuts (in-place buffers, NNPACK's Winograd convolutions, row
strips), which compute the same values; the check measures that they do. Two layers have no ONNX
form that works at every size and are swapped for equivalents before tracing (``_SUBSTITUTES``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import replacing
from .errors import LLEError, OutputExistsError, UsageError
from .flows.layers import InvertibleConv1x1, conv1x1
from .extras import require_extra
from .runner import LoadedModel

__all__ = [
    "OPSET",
    "TOLERANCE",
    "CHECK_SIZE",
    "ExportError",
    "OnnxExport",
    "require_onnx",
    "export_onnx",
    "onnx_paths",
    "check_targets",
    "check_image",
    "exportable_module",
]

OPSET = 18
TOLERANCE = 1e-4  # max |diff| to lle's own float32 output that an export may have
# Odd and a multiple of neither 2, 12 nor 16: every padding and crop path of every family runs.
CHECK_SIZE = (75, 101)
CHECK_SEED = 0  # the check sample's eps: torch.Generator().manual_seed(CHECK_SEED), as ``lle sample --seed 0``
CHECK_TAU = 1.0
SIDECAR_FORMAT = 1
_EXTRA_MODULES = ("onnx", "onnxscript", "onnxruntime")  # torch.onnx.export needs onnxscript


class ExportError(LLEError):
    """The exporter failed, or the exported file does not reproduce lle; nothing was written."""


@dataclass(frozen=True)
class OnnxExport:
    model: str
    path: Path  # the .onnx file
    sidecar: Path  # its .onnx.json
    max_abs_diff: float  # enhancement (tau 0 for flows) against lle, on the check image
    sample_max_abs_diff: float | None  # flows: a sample with seeded noise against ``lle sample``
    seconds: float  # tracing, conversion and the check


def require_onnx() -> None:
    """``MissingExtraError`` (exit code 2) naming the ``onnx`` extra unless its packages import."""
    for module in _EXTRA_MODULES:
        require_extra("onnx", module, "ONNX export")


def onnx_paths(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Where ``export_onnx`` writes: ``DIR/<name>.onnx`` and ``DIR/<name>.onnx.json``."""
    d = Path(directory)
    return d / f"{name}.onnx", d / f"{name}.onnx.json"


def check_targets(directory: str | os.PathLike, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """``onnx_paths``, after refusing a ``directory`` that is a file, and existing files unless
    ``overwrite`` (callers run this before loading weights: an export takes a minute)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: not a directory; give a folder for the .onnx file and its .onnx.json")
    paths = onnx_paths(directory, name)
    if not overwrite:
        for p in paths:
            if os.path.lexists(p):
                raise OutputExistsError(f"{p}: already exists; pass --overwrite to replace it or choose another folder")
    return paths


def check_image(height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W) float32: a dim, textured scene in 8-bit steps (k / 255, as a decoded photo), the
    same on every machine (a fixed generator), so export checks are repeatable."""
    g = torch.Generator().manual_seed(1234)
    yy = torch.linspace(0.0, 1.0, height).view(1, 1, height, 1)
    xx = torch.linspace(0.0, 1.0, width).view(1, 1, 1, width)
    tint = torch.tensor([0.9, 1.0, 0.7]).view(1, 3, 1, 1)
    x = (0.02 + 0.25 * yy * xx + 0.1 * torch.sin(12 * xx) * yy) * tint + 0.03 * torch.rand(1, 3, height, width, generator=g)
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


# -- layers swapped before tracing -------------------------------------------------------------


class _AdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two products with bin-membership matrices built from the input's
    size inside the graph. The exporter's own decomposition bakes the traced size's bin indices into
    the graph, so the pooling (the UNet's pyramid) is wrong at any other size."""

    def __init__(self, source: nn.AdaptiveAvgPool2d) -> None:
        super().__init__()
        size = source.output_size
        self.bins = (size, size) if isinstance(size, int) else tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows = _bin_weights(h, self.bins[0] or h, x)
        cols = _bin_weights(w, self.bins[1] or w, x)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def _bin_weights(n: Any, bins: Any, like: torch.Tensor) -> torch.Tensor:
    """(bins, n) averaging weights of adaptive pooling's bins ``[floor(i n / b), ceil((i + 1) n / b))``,
    written as integer products (no division of the traced size): j is in bin i iff
    ``(j + 1) b > i n`` and ``j b < (i + 1) n``."""
    j = torch.arange(n, device=like.device).unsqueeze(0)
    i = torch.arange(bins, device=like.device).unsqueeze(1)
    member = ((j + 1) * bins > i * n) & (j * bins < (i + 1) * n)
    weights = member.to(like.dtype)
    return weights / weights.sum(dim=1, keepdim=True)


class _FrozenInvConv1x1(nn.Module):
    """``InvertibleConv1x1`` with its inverse matrix and log-determinant computed once, here, as lle
    computes them on every call (float64 inverse, cast back): ONNX has neither a matrix inverse nor
    ``slogdet``, and the exporter traces parameters as inputs, so it cannot fold them itself."""

    def __init__(self, source: InvertibleConv1x1) -> None:
        super().__init__()
        w = source.weight.detach()
        self.register_buffer("weight", w.clone())
        self.register_buffer("weight_inverse", torch.linalg.inv(w.double()).to(w.dtype))
        self.register_buffer("logdet", torch.linalg.slogdet(w.float())[1].to(w.dtype))

    def forward(self, x: torch.Tensor, *, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.logdet.to(x.dtype) * (x.shape[2] * x.shape[3])
        if inverse:
            return conv1x1(x, self.weight_inverse.to(x.dtype)), -d
        return conv1x1(x, self.weight.to(x.dtype)), d


_SUBSTITUTES: dict[type[nn.Module], Callable[[Any], nn.Module]] = {
    nn.AdaptiveAvgPool2d: _AdaptiveAvgPool2d,
    InvertibleConv1x1: _FrozenInvConv1x1,
}


def exportable_module(module: nn.Module) -> nn.Module:
    """A float32, NCHW copy of ``module`` with ``_SUBSTITUTES`` swapped in, frozen (the original is
    untouched: a loaded model stays usable)."""
    net = copy.deepcopy(module).float().to(memory_format=torch.contiguous_format).eval()
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            make = next((f for t, f in _SUBSTITUTES.items() if isinstance(child, t)), None)
            if make is not None:
                setattr(parent, child_name, make(child))
    net.requires_grad_(False)
    return net


class _ImageGraph(nn.Module):
    """image -> enhanced, clamped to [0, 1] as the runner clamps every family's output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).clamp(0.0, 1.0)


class _FlowGraph(nn.Module):
    """(lq, noise) -> the decoded images of ``mean(lq) + noise``: the encoder once, the inverse flow
    on every latent (``noise`` may hold n of them against one image), unclamped as ``lle sample``
    keeps them for its range checks."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, lq: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        features = self.net.condition(lq)
        images, _ = self.net.decode(features, self.net.latent_mean(features) + noise)
        return images


# -- export ------------------------------------------------------------------------------------


def export_onnx(
    model: LoadedModel,
    directory: str | os.PathLike,
    *,
    overwrite: bool = False,
    check_size: tuple[int, int] = CHECK_SIZE,
    tolerance: float = TOLERANCE,
) -> OnnxExport:
    """Write ``DIR/<name>.onnx`` (opset 18, dynamic H and W, weights inside) and its sidecar
    ``DIR/<name>.onnx.json``, after checking in ONNX Runtime that the file reproduces ``model``
    within ``tolerance`` on a ``check_size`` image (``ExportError`` otherwise; nothing is written).

    ``model`` must be on the CPU in float32 (``api.load_model(name, device="cpu", precision="fp32")``).
    Existing files are refused (``OutputExistsError``) unless ``overwrite``.
    """
    require_onnx()
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise UsageError(f"{model.name}: export needs the model on the CPU in float32; load it with device='cpu', precision='fp32'")
    target, sidecar = check_targets(directory, model.name, overwrite=overwrite)
    Path(directory).mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    flow = model.spec.samples
    x = check_image(*check_size)
    graph, args, names, dynamic = (_flow_graph if flow else _image_graph)(model, x)
    program = _trace(graph, args, names, dynamic, target)
    program.model.metadata_props.update({"lle.model": model.name, "lle.family": model.entry.family,
                                         "lle.license": model.entry.license, "lle.sidecar": sidecar.name})
    with contextlib.ExitStack() as stack:
        tmp_onnx = stack.enter_context(replacing(target))
        tmp_json = stack.enter_context(replacing(sidecar))  # renamed first on success, both removed on failure
        program.save(tmp_onnx, external_data=False)
        check = _check_flow(model, tmp_onnx, x) if flow else _check_image(model, tmp_onnx, args[0])
        diffs = [check["max_abs_diff"], check.get("sample_max_abs_diff", 0.0)]
        if not all(d <= tolerance for d in diffs):  # NaN fails too
            worst = max(diffs, key=lambda d: float("inf") if d != d else d)
            raise ExportError(
                f"{target}: the exported graph differs from lle's output by {worst:.3g} (more than {tolerance:g}) on the "
                f"{check_size[0]}x{check_size[1]} check image; nothing was written; please report it with `lle models info {model.name}`"
            )
        size = tuple(args[0].shape[-2:]) if not flow else check_size
        check.update(tolerance=tolerance, image=_check_image_text(size), seconds=round(time.perf_counter() - start, 2))
        info = _sidecar(model, target, tmp_onnx, check, args, flow)
        Path(tmp_json).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return OnnxExport(model.name, target, sidecar, check["max_abs_diff"], check.get("sample_max_abs_diff"),
                      time.perf_counter() - start)


def _image_graph(model: LoadedModel, x: torch.Tensor):
    spec = model.spec
    if spec.multiple_of > 1:  # the runner pads to the multiple; the graph takes only such sizes
        h, w = torch.export.Dim("h_blocks"), torch.export.Dim("w_blocks")
        dims = {2: spec.multiple_of * h, 3: spec.multiple_of * w}
        # the check image cropped to a multiple: the graph is traced and checked on it
        x = x[..., : x.shape[-2] // spec.multiple_of * spec.multiple_of, : x.shape[-1] // spec.multiple_of * spec.multiple_of]
    else:
        low = max(spec.min_size, 2)  # sizes 0 and 1 are specialised by torch.export
        dims = {2: torch.export.Dim("height", min=low), 3: torch.export.Dim("width", min=low)}
    return _ImageGraph(exportable_module(model.module)).eval(), (x,), (["image"], ["enhanced"]), {"image": dims}


def _flow_graph(model: LoadedModel, x: torch.Tensor):
    module = model.module
    with torch.inference_mode():
        lq, _ = module.prepare(x)
        mean = module.latent_mean(module.condition(lq))
    multiple = int(module.config.pad_multiple)
    per_block = multiple * mean.shape[-2] // lq.shape[-2]  # latent pixels per ``multiple`` input pixels
    h, w = torch.export.Dim("h_blocks"), torch.export.Dim("w_blocks")
    # two latents in the traced example: a batch of 1 would be specialised away
    noise = torch.zeros(2, *mean.shape[1:])
    dynamic = {"lq": {2: multiple * h, 3: multiple * w},
               "noise": {0: torch.export.Dim("samples", min=1), 2: per_block * h, 3: per_block * w}}
    return _FlowGraph(exportable_module(module)).eval(), (lq.clone(), noise), (["lq", "noise"], ["image"]), dynamic


def _trace(graph: nn.Module, args: tuple, names: tuple[list[str], list[str]], dynamic: dict, target: Path):
    """torch.onnx.export (dynamo), its progress lines kept off stdout; failures as one-line ExportError."""
    inputs, outputs = names
    log = io.StringIO()
    try:
        # autograd on: the models' plain formulation (see the module docstring)
        with torch.enable_grad(), contextlib.redirect_stdout(log):
            return torch.onnx.export(
                graph, args, None, dynamo=True, opset_version=OPSET, input_names=inputs, output_names=outputs,
                dynamic_shapes=dynamic, external_data=False, optimize=True, verbose=False,
            )
    except Exception as e:  # the exporter raises many kinds; the user needs the first line and what to do
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ExportError(f"{target}: torch.onnx could not export this model ({type(e).__name__}: {first}); "
                          f"nothing was written; please report it with your torch version ({torch.__version__})") from None


def _session(path: Path | str, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # its warnings about unused initialisers are not the user's business
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _check_image(model: LoadedModel, path: Path, x: torch.Tensor) -> dict[str, Any]:
    ref = model.enhance_tensor(x).numpy()
    out = _session(path).run(None, {"image": x.numpy()})[0]
    return {"max_abs_diff": _max_diff(out, ref), "against": "lle enhance (LoadedModel.enhance_tensor), float32 on the CPU"}


def _check_flow(model: LoadedModel, path: Path, x: torch.Tensor) -> dict[str, Any]:
    from .sampling import sample_array

    module = model.module
    ref = model.enhance_tensor(x).numpy()
    rgb = x[0].permute(1, 2, 0).numpy()
    with sample_array(model, rgb, n=1, taus=(CHECK_TAU,), seed=CHECK_SEED) as samples:
        sample_ref = samples.samples[0].image
    with torch.inference_mode():
        lq, pad = module.prepare(x)
    latent = (1, *_latent_shape(model, lq))
    eps = torch.randn(latent, generator=torch.Generator().manual_seed(CHECK_SEED))
    noise = torch.cat([torch.zeros(latent), CHECK_TAU * eps])  # tau 0 and one sample in one run
    out = torch.from_numpy(_session(path).run(None, {"lq": lq.numpy(), "noise": noise.numpy()})[0])
    out = pad.crop(out)
    enhanced = out[:1].clamp(0.0, 1.0).numpy()
    sample = out[1].permute(1, 2, 0).numpy()
    return {"max_abs_diff": _max_diff(enhanced, ref), "sample_max_abs_diff": _max_diff(sample, sample_ref),
            "against": f"lle enhance (tau 0) and lle sample --tau {CHECK_TAU:g} --seed {CHECK_SEED} (unclamped), float32 on the CPU"}


def _latent_shape(model: LoadedModel, lq: torch.Tensor) -> tuple[int, int, int]:
    with torch.inference_mode():
        return tuple(model.module.latent_mean(model.module.condition(lq)).shape[1:])


def _check_image_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]} synthetic dim image in 8-bit steps (lle_cli.export.check_image)"


# -- the sidecar -------------------------------------------------------------------------------


def _sidecar(model: LoadedModel, target: Path, written: Path, check: dict, args: tuple, flow: bool) -> dict[str, Any]:
    import onnx
    import onnxruntime

    from . import __version__
    from .weights import sha256_file

    entry, spec = model.entry, model.spec
    info: dict[str, Any] = {
        "format": f"lle-onnx-sidecar/{SIDECAR_FORMAT}",
        "model": entry.name,
        "family": entry.family,
        "title": entry.title,
        "paper": entry.paper,
        "license": entry.license,
        "training_data": entry.training_data,
        "architecture": _config_dict(model.module),
        "weights": _weights_info(model, sha256_file),
        "onnx": {
            "file": target.name,
            "sha256": sha256_file(Path(written)),
            "opset": OPSET,
            "ir_version": int(onnx.load(str(written), load_external_data=False).ir_version),
            "weights_inside": True,
            "exported_with": {"lle": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
        },
    }
    info.update(_flow_contract(model, args) if flow else _image_contract(spec))
    # what `lle enhance --precision auto` does with this family on a CPU with native bf16 (measured by
    # bench/precision.py: faster, and within one 8-bit level of float32 on 99.9 % of the pixels);
    # `--runtime openvino` then compiles the graph in bf16 too (lle_cli.engines)
    info["auto_cpu_bf16"] = bool(spec.auto_cpu_bf16 and not spec.samples)
    info["check"] = {**check, "runtime": f"onnxruntime {onnxruntime.__version__}, CPUExecutionProvider, all graph optimisations"}
    return info


def _config_dict(module: nn.Module) -> dict[str, Any] | None:
    cfg = getattr(module, "config", None)
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None


def _weights_info(model: LoadedModel, sha256_file: Callable[[Path], str]) -> dict[str, Any]:
    """The bytes the export was made from and what the manifest vouches for."""
    entry, source = model.entry, model.weights_source
    if source == "embedded":
        sha = entry.embedded_sha256
    elif Path(source).is_file():
        sha = sha256_file(Path(source))
    else:  # built in memory (tests, a training script): nothing on disk to name
        sha = None
    return {
        "source": source if source == "embedded" or sha is None else Path(source).name,
        "sha256": sha,
        "manifest": {
            "embedded_sha256": entry.embedded_sha256,
            "hub_sha256": entry.hub.sha256 if entry.hub else None,
            "upstream_filename": entry.upstream.filename if entry.upstream else None,
            "upstream_sha256": entry.upstream.sha256 if entry.upstream else None,
        },
        "matches_manifest": sha is not None and sha in entry.known_sha256,
    }


def _padding_text(spec) -> str:
    if spec.multiple_of == 1 and spec.min_size <= 1:
        return "none: any size runs as it is"
    return (f"lle pads each axis to max(size, {spec.min_size}) rounded up to a multiple of {spec.multiple_of}, "
            "the extra split as floor(extra/2) before and the rest after, mirrored without repeating the edge "
            "(torch 'reflect'; edge replication where the image is smaller than the padding), and crops the output back")


def _image_contract(spec) -> dict[str, Any]:
    return {
        "graph": "image -> enhanced",
        "inputs": {"image": {"shape": [1, 3, "H", "W"], "dtype": "float32", "layout": "NCHW, RGB",
                             "range": [0.0, 1.0], "meaning": "the decoded photo's sRGB values / 255 (or / 65535), not linearised"}},
        "outputs": {"enhanced": {"shape": [1, 3, "H", "W"], "dtype": "float32", "layout": "NCHW, RGB", "range": [0.0, 1.0]}},
        "size": {"dynamic": ["H", "W"], "multiple_of": spec.multiple_of, "min_size": spec.min_size,
                 "padding": _padding_text(spec)},
        "in_graph": ["the network, with its own padding and resizing", "the clamp of the output to [0, 1]"],
        "not_in_graph": [
            "decoding and encoding files, EXIF orientation, ICC profiles, alpha (lle passes alpha through)",
            "the padding to multiple_of / min_size described under size",
            "tiling of large images (lle tiles to bound memory; the graph runs the whole image)",
            "lle's refusal of NaN/Inf outputs",
            "--strength (a blend with the input in linear light)",
        ],
    }


def _flow_contract(model: LoadedModel, args: tuple) -> dict[str, Any]:
    cfg = model.module.config
    m = int(cfg.pad_multiple)
    lq, noise = args
    channels, per_block = int(noise.shape[1]), m * noise.shape[-2] // lq.shape[-2]
    down = m // per_block
    histeq = bool(getattr(cfg, "concat_histeq", False))
    lq_parts = ["channels 0-2: log(max(x + 0.001, 0.001)) of the padded image x in [0, 1]"]
    if histeq:
        lq_parts.append("channels 3-5: each channel of round(x * 255) of the padded image histogram-equalised "
                        "(OpenCV equalizeHist, over the whole padded image), / 255")
    return {
        "graph": "conditional flow: (lq, noise) -> image",
        "inputs": {
            "lq": {"shape": [1, int(lq.shape[1]), "Hp", "Wp"], "dtype": "float32", "layout": "NCHW",
                   "meaning": "the network input after the flow's preprocessing (below)", "channels": lq_parts},
            "noise": {"shape": ["n", channels, f"Hp/{down}", f"Wp/{down}"], "dtype": "float32",
                      "meaning": "added to the latent's mean: z = mean(lq) + noise. lle enhance: zeros; lle sample: "
                                 "tau * eps + offset with eps ~ N(0, 1) (lle draws eps with torch.randn(1, "
                                 f"{channels}, Hp/{down}, Wp/{down}, generator=torch.Generator().manual_seed(seed + j)) for sample j). "
                                 "n latents decode against one image in one run"},
        },
        "outputs": {"image": {"shape": ["n", 3, "Hp", "Wp"], "dtype": "float32", "layout": "NCHW, RGB",
                              "range": "unclamped: crop the padding, then clamp to [0, 1] to write; values far outside "
                                       "[0, 1] or non-finite mean the inverse flow exploded (lle sample flags them)"}},
        "latent": {"channels": channels, "downscale": down, "height": f"Hp/{down}", "width": f"Wp/{down}"},
        "preprocessing": {
            "padding": (f"each axis grows by {m} - size % {m} pixels (1 to {m}, never 0): floor(total/2) before, "
                        "the rest after, mirrored with the edge pixel repeated (numpy 'symmetric', OpenCV BORDER_REFLECT); "
                        f"Hp = H + {m} - H % {m}, Wp likewise"),
            "histogram_equalisation": histeq,
            "log_image": "log(max(x + 0.001, 0.001)) per channel",
            "reference": "lle_cli.models.llflow.preprocess.network_input (LLFlow.prepare)",
        },
        "postprocessing": "crop the padding (rows top:Hp-bottom, columns left:Wp-right), clamp to [0, 1]",
        "size": {"dynamic": ["Hp", "Wp", "n"], "multiple_of": m, "min_size": m},
        "in_graph": ["the conditional encoder (colour map, noise map, RRDB trunk)", "the latent's mean",
                     "the inverse flow with every coupling (spline inverses included)"],
        "not_in_graph": [
            "the preprocessing above (padding, log image, histogram equalisation)",
            "drawing eps, tau and the z offset (pass them in through noise)",
            "cropping and clamping the output, lle's non-finite and out-of-range checks",
            "tiling of large images, OOD warnings (lle score-ood)",
        ],
    }
