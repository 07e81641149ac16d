"""Measuring enhanced images against references, under named, documented protocols.

Low-light papers measure differently, and the differences are worth several dB. Every run here
computes the same six numbers, each labelled, under one *protocol* that fixes the details:

* ``psnr``, ``ssim`` (RGB), ``ssim_grey``: the prediction as it is;
* ``psnr_aligned``, ``ssim_aligned``, ``ssim_grey_aligned``: after scaling the prediction so its
  mean brightness matches the reference's (a use of the ground truth that KinD's and LLFlow's
  test scripts make and that a real photo never allows).

A protocol says how a float prediction becomes 8-bit, how the brightness is matched, how grey
SSIM is computed, and which two numbers are its headline ("the PSNR and SSIM of the paper"):

``plain``
    No alignment; PSNR and SSIM on RGB with scikit-image's defaults (7x7 uniform window, sample
    covariance, data range 255), predictions rounded to 8 bits like torchvision's ``save_image``.
    The official Zero-DCE weights give 14.86 dB / 0.562 on LOL eval15 this way, the 14.86 LLFlow's
    table lists for Zero-DCE.
``llflow``
    LLFlow's ``code/test.py`` and ``code/Measure.py`` (wyf0912/LLFlow): the float output is
    multiplied by ``mean_grey(GT) / mean(output)``, where ``mean(output)`` is the plain mean over
    all pixels and channels and ``mean_grey(GT)`` is ``cv2.cvtColor(gt, COLOR_BGR2GRAY)`` applied
    to an RGB array (so 0.114 R + 0.587 G + 0.299 B), then clipped and truncated to 8 bits.
    PSNR on RGB (data range 255); SSIM on OpenCV's grey image with scikit-image 0.18's
    ``multichannel=True``, which on a 2-D image is a 1-D SSIM down each column (``ssim_columns``).
    Headline: the aligned PSNR and the aligned grey SSIM.

Every run also measures NIQE (no reference; lower is more natural, BasicSR's implementation) on
each prediction as saved, which is also all there is to measure when a folder has no references:
``evaluate_predictions(folder, None)`` and ``evaluate_model(model, folder, None)`` measure each
image alone, and their headline is the mean NIQE. Images smaller than two 96x96 blocks have no
NIQE (NaN, left out of the mean).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import record as rec
from .errors import InputError, LLEError, OutputExistsError, UsageError
from .formats import IMAGE_SUFFIXES, list_image_files
from .imageio import Picture, encode_image, read_image, write_bytes_atomic
from .metrics import grey_float, grey_u8, niqe, psnr, quantise, scale_to_mean, ssim, ssim_columns
from .runner import LoadedModel
from .weights import sha256_file

__all__ = [
    "Protocol",
    "PROTOCOLS",
    "METRICS",
    "Pair",
    "ImageResult",
    "EvalReport",
    "Extras",
    "get_protocol",
    "pair_files",
    "list_single",
    "measure",
    "measure_no_reference",
    "evaluate_predictions",
    "evaluate_model",
    "summarise",
    "sort_results",
]


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    quantise: str  # how a float prediction becomes 8-bit: "round" or "truncate"
    align: str  # how the brightness is matched: "grey-mean" or "llflow"
    grey_ssim: str  # "2d" (scikit-image default on a grey image) or "columns" (LLFlow's)
    headline: tuple[str, str]  # the (PSNR, SSIM) metric keys the protocol's papers report
    source: str

    def describe(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    "plain": Protocol(
        name="plain",
        summary="no alignment; PSNR and SSIM on RGB (scikit-image defaults)",
        quantise="round",
        align="grey-mean",
        grey_ssim="2d",
        headline=("psnr", "ssim"),
        source="scikit-image peak_signal_noise_ratio / structural_similarity defaults on 8-bit RGB",
    ),
    "llflow": Protocol(
        name="llflow",
        summary="output scaled to the ground truth's mean grey level; PSNR on RGB, SSIM on grey (column-wise)",
        quantise="truncate",
        align="llflow",
        grey_ssim="columns",
        headline=("psnr_aligned", "ssim_grey_aligned"),
        source="wyf0912/LLFlow code/test.py (mean alignment) and code/Measure.py (scikit-image 0.18.1, OpenCV grey)",
    ),
}

# key -> (column label, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "psnr": ("PSNR", True),
    "ssim": ("SSIM", True),
    "ssim_grey": ("SSIM grey", True),
    "psnr_aligned": ("PSNR al", True),
    "ssim_aligned": ("SSIM al", True),
    "ssim_grey_aligned": ("SSIM grey al", True),
    "niqe": ("NIQE", False),
    "lpips": ("LPIPS", False),
}
BASE_METRICS = tuple(k for k in METRICS if k not in ("lpips", "niqe"))  # the full-reference six


def get_protocol(name: str | Protocol) -> Protocol:
    if isinstance(name, Protocol):
        return name
    key = name.strip().lower()
    if key not in PROTOCOLS:
        raise UsageError(f"--protocol {name!r}: expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[key]


# ---------------------------------------------------------------------------------------------
# Pairing


@dataclass(frozen=True)
class Pair:
    name: str  # the shared file stem
    prediction: str | None
    reference: str | None
    error: str | None = None


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _images_by_stem(folder: Path, what: str, strip: str | None) -> tuple[dict[str, Path], dict[str, str]]:
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such directory ({what})")
    found: dict[str, list[Path]] = {}
    for f in list_image_files(folder, recursive=False):
        stem = f.stem
        if strip and stem.endswith(strip) and len(stem) > len(strip):
            stem = stem[: -len(strip)]
        found.setdefault(stem, []).append(f)
    if not found:
        raise UsageError(f"{folder}: no images in this directory ({what}; looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    single = {s: fs[0] for s, fs in found.items() if len(fs) == 1}
    clashes = {s: f"{folder}: several files share the stem {s!r} ({', '.join(f.name for f in fs)}); keep one" for s, fs in found.items() if len(fs) > 1}
    return single, clashes


def pair_files(pred_dir: str | Path, ref_dir: str | Path, *, strip_suffix: str | None = "_enhanced") -> list[Pair]:
    """Match images of two folders by file stem (``1.png`` with ``1.jpg``; ``1_enhanced.png`` with ``1.png``).

    Every reference gets a pair; a reference without a prediction is a failed pair (a table that
    silently drops images cannot be compared with a paper's). Predictions without a reference are
    ignored.
    """
    preds, pclash = _images_by_stem(Path(pred_dir), "predictions", strip_suffix)
    refs, rclash = _images_by_stem(Path(ref_dir), "references", None)
    pairs = []
    for stem in sorted({*refs, *rclash}, key=_natural_key):
        if stem in rclash:
            pairs.append(Pair(stem, None, None, rclash[stem]))
        elif stem in pclash:
            pairs.append(Pair(stem, None, str(refs[stem]), pclash[stem]))
        elif stem not in preds:
            pairs.append(Pair(stem, None, str(refs[stem]), f"{refs[stem]}: no image named {stem}.* in {pred_dir}"))
        else:
            pairs.append(Pair(stem, str(preds[stem]), str(refs[stem])))
    return pairs


def list_single(folder: str | Path) -> list[Pair]:
    """The images of a folder without references, one ``Pair`` each (reference None), in natural order.

    Names are file stems, as with references; where two files share a stem their full names are used.
    """
    found = list_image_files(Path(folder), recursive=False) if Path(folder).is_dir() else None
    if found is None:
        raise UsageError(f"{folder}: no such directory (images to measure)")
    if not found:
        raise UsageError(f"{folder}: no images in this directory (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    stems: dict[str, int] = {}
    for f in found:
        stems[f.stem] = stems.get(f.stem, 0) + 1
    named = [(f.stem if stems[f.stem] == 1 else f.name, f) for f in found]
    return [Pair(name, str(f), None) for name, f in sorted(named, key=lambda t: _natural_key(t[0]))]


# ---------------------------------------------------------------------------------------------
# Measuring one pair


@dataclass
class Extras:
    """Optional learned metrics, already loaded: LPIPS, and no-reference metrics by name."""

    lpips: Callable[[np.ndarray, np.ndarray], float] | None = None
    no_reference: dict[str, tuple[Callable[[np.ndarray], float], bool]] = field(default_factory=dict)

    def keys(self) -> list[str]:
        return (["lpips"] if self.lpips else []) + list(self.no_reference)

    def higher_is_better(self, key: str) -> bool:
        if key in self.no_reference:
            return not self.no_reference[key][1]
        return METRICS.get(key, ("", True))[1]


def _to_u8(pic: Picture) -> np.ndarray:
    """The picture's RGB as uint8; 8-bit sources come back exactly, deeper ones are rounded."""
    return quantise(pic.rgb, "round")


def _alignment(pred: np.ndarray, ref8: np.ndarray, protocol: Protocol) -> tuple[float, float]:
    """(current, target) brightness of a [0, 1] prediction and its 8-bit reference."""
    if protocol.align == "llflow":
        # test.py: mean_out = sr_t.view(1, -1).mean(); mean_gt = cvtColor(gt, BGR2GRAY).mean() / 255
        # with gt in RGB order, so the BT.601 weights land on the wrong channels; kept as published.
        return float(np.mean(pred, dtype=np.float64)), float(grey_float(ref8[..., ::-1]).mean() / 255)
    return float(grey_float(pred).mean()), float(grey_float(ref8).mean() / 255)


def _niqe(image8: np.ndarray) -> float:
    """NIQE, or NaN for an image too small for its two 96x96 blocks (a table still has a row for it)."""
    try:
        return niqe(image8)
    except ValueError:
        return math.nan


def _as_u8(prediction: np.ndarray, protocol: Protocol) -> np.ndarray:
    if prediction.dtype == np.uint8:
        return prediction
    return quantise(np.clip(prediction.astype(np.float32), 0.0, 1.0), protocol.quantise)


def measure_no_reference(
    prediction: np.ndarray, protocol: Protocol | str = "plain", extras: Extras | None = None, *, with_niqe: bool = True
) -> dict[str, float]:
    """The no-reference metrics of one image: NIQE (unless ``with_niqe`` is false) and ``extras``'
    no-reference metrics, on the prediction as saved (8 bits, quantised as the protocol says)."""
    pred8 = _as_u8(prediction, get_protocol(protocol))
    out = {"niqe": _niqe(pred8)} if with_niqe else {}
    for name, (fn, _lower) in (extras.no_reference.items() if extras else ()):
        out[name] = fn(pred8)
    return out


def measure(
    prediction: np.ndarray,
    reference: np.ndarray,
    protocol: Protocol | str = "plain",
    extras: Extras | None = None,
    *,
    with_niqe: bool = False,
) -> tuple[dict[str, float], float]:
    """All metrics of one prediction against its reference, and the alignment gain.

    ``prediction``: (H, W, 3) uint8 (an image as saved) or float in [0, 1] (a model's output);
    ``reference``: (H, W, 3) uint8. ``with_niqe`` adds the prediction's NIQE (no reference; the
    reports do, at about 0.15 s per 600x400 image).
    """
    p = get_protocol(protocol)
    if prediction.shape != reference.shape:
        raise InputError(f"prediction is {prediction.shape[1]}x{prediction.shape[0]} but the reference is {reference.shape[1]}x{reference.shape[0]}")
    if prediction.dtype == np.uint8:
        pred8, predf = prediction, prediction.astype(np.float64) / 255
    else:
        predf = np.clip(prediction.astype(np.float32), 0.0, 1.0)
        pred8 = quantise(predf, p.quantise)
    current, target = _alignment(predf, reference, p)
    aligned, gain = scale_to_mean(predf, current, target)
    al8 = quantise(aligned, p.quantise)
    grey_ssim = ssim_columns if p.grey_ssim == "columns" else ssim
    ref_grey = grey_u8(reference)
    out = {
        "psnr": psnr(pred8, reference),
        "ssim": ssim(pred8, reference),
        "ssim_grey": grey_ssim(grey_u8(pred8), ref_grey),
        "psnr_aligned": psnr(al8, reference),
        "ssim_aligned": ssim(al8, reference),
        "ssim_grey_aligned": grey_ssim(grey_u8(al8), ref_grey),
    }
    if with_niqe:
        out["niqe"] = _niqe(pred8)  # the prediction as it is: an aligned image used the ground truth
    if extras:
        shown = al8 if p.headline[0].endswith("_aligned") else pred8  # what the protocol's papers measure
        if extras.lpips:
            out["lpips"] = extras.lpips(shown, reference)
        for name, (fn, _lower) in extras.no_reference.items():
            out[name] = fn(shown)
    return out, gain


# ---------------------------------------------------------------------------------------------
# Reports


@dataclass
class ImageResult:
    name: str
    prediction: str | None
    reference: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    gain: float | None = None  # the alignment's brightness factor
    seconds: float = 0.0
    error: str | None = None
    producer: dict[str, Any] | None = None  # which recorded run wrote the prediction
    input: str | None = None  # with --model: the low-light image the prediction was made from

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = {k: _finite(v) for k, v in self.metrics.items()}
        d["gain"] = _finite(self.gain)
        return d


def _finite(v: float | None) -> float | None:
    """JSON has no inf/NaN: identical images (PSNR inf) and undefined values become null."""
    return None if v is None or not math.isfinite(v) else v


@dataclass
class EvalReport:
    protocol: Protocol
    images: list[ImageResult]
    metrics: list[str]  # the metric keys measured, in column order
    mean: dict[str, float]
    model: dict[str, Any] | None = None  # --model: what produced the predictions
    producers: list[dict[str, Any]] = field(default_factory=list)  # runs recorded beside the predictions
    unrecorded: int = 0  # predictions without a run record
    modified: int = 0  # predictions whose bytes differ from what their record says was written
    records: list[str] = field(default_factory=list)  # run records this evaluation wrote
    seconds: float = 0.0
    reference_free: bool = False  # no references: each image measured alone (NIQE)

    @property
    def failures(self) -> list[ImageResult]:
        return [r for r in self.images if not r.ok]

    @property
    def headline_keys(self) -> tuple[str, ...]:
        return ("niqe",) if self.reference_free else self.protocol.headline

    @property
    def headline(self) -> dict[str, float | None]:
        return {k: self.mean.get(k) for k in self.headline_keys}

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": "no-reference" if self.reference_free else "reference",
            "protocol": self.protocol.describe(),
            "headline": {k: _finite(v) for k, v in self.headline.items()},
            "mean": {k: _finite(v) for k, v in self.mean.items()},
            "count": len(self.images) - len(self.failures),
            "failed": len(self.failures),
            "model": self.model,
            "producers": self.producers,
            "unrecorded": self.unrecorded,
            "modified": self.modified,
            "records": self.records,
            "seconds": round(self.seconds, 3),
            "images": [r.to_dict() for r in self.images],
        }


def summarise(results: Iterable[ImageResult], keys: Iterable[str]) -> dict[str, float]:
    """Mean of each metric over the images that have it (inf if any PSNR is inf; NaN when none).

    A NaN (NIQE of an image smaller than its blocks) is left out rather than making the mean NaN.
    """
    ok = [r for r in results if r.ok]
    out = {}
    for k in keys:
        vals = [v for r in ok if not math.isnan(v := r.metrics.get(k, math.nan))]
        out[k] = float(np.mean(vals)) if vals else math.nan
    return out


def _keys(reference_free: bool, with_niqe: bool, extras: Extras | None) -> list[str]:
    if reference_free:
        if extras and extras.lpips:
            raise UsageError("LPIPS compares with a reference: give a folder of references, or leave out --lpips")
        keys = [*(["niqe"] if with_niqe else []), *(extras.no_reference if extras else [])]
        if not keys:
            raise UsageError("without references only no-reference metrics can be measured: keep NIQE on or add --no-ref")
        return keys
    return [*BASE_METRICS, *(["niqe"] if with_niqe else []), *(extras.keys() if extras else [])]


def sort_results(results: list[ImageResult], metric: str, extras: Extras | None = None) -> list[ImageResult]:
    """Worst first for ``metric`` (lowest PSNR/SSIM, highest LPIPS); failed pairs first of all."""
    higher = extras.higher_is_better(metric) if extras else METRICS.get(metric, ("", True))[1]

    def key(r: ImageResult) -> tuple[int, float]:
        if not r.ok:
            return (0, 0.0)
        v = r.metrics.get(metric, math.nan)
        v = -math.inf if math.isnan(v) else v
        return (1, v if higher else -v)

    return sorted(results, key=key)


def _read(path: str, what: str) -> Picture:
    try:
        return read_image(path)
    except InputError as e:
        raise InputError(f"{e} ({what})") from None


def evaluate_predictions(
    pred_dir: str | Path,
    ref_dir: str | Path | None,
    protocol: Protocol | str = "plain",
    *,
    extras: Extras | None = None,
    niqe: bool = True,
    progress: Callable[[ImageResult], None] | None = None,
) -> EvalReport:
    """Measure the images of ``pred_dir`` against ``ref_dir`` (pairs by stem), with their provenance.

    ``ref_dir`` None: no references, each image is measured alone (NIQE and ``extras``' no-reference
    metrics). ``niqe`` false leaves NIQE out.
    """
    p = get_protocol(protocol)
    free = ref_dir is None
    keys = _keys(free, niqe, extras)
    t0 = time.perf_counter()
    index = rec.index_outputs(pred_dir)
    runs: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    unrecorded = modified = 0
    results = []
    for pair in list_single(pred_dir) if free else pair_files(pred_dir, ref_dir):
        start = time.perf_counter()
        res = ImageResult(pair.name, pair.prediction, pair.reference, error=pair.error)
        if pair.prediction and (pair.reference or free) and res.ok:
            found = index.get(Path(pair.prediction).name)
            if found is None:
                unrecorded += 1
            else:
                run, entry = found
                same = sha256_file(Path(pair.prediction)) == entry.get("sha256")
                modified += not same
                rid = str(run.get("id"))
                runs[rid] = run
                counts[rid] = counts.get(rid, 0) + 1
                res.producer = {"run": rid, "unchanged": same, "input": entry.get("input"), "input_sha256": entry.get("input_sha256")}
            try:
                pred = _read(pair.prediction, "prediction")
                p8 = pred.rgb if pred.bit_depth != 8 else _to_u8(pred)
                if free:
                    res.metrics = measure_no_reference(p8, p, extras, with_niqe=niqe)
                else:
                    ref = _read(pair.reference, "reference")
                    res.metrics, res.gain = measure(p8, _to_u8(ref), p, extras, with_niqe=niqe)
            except InputError as e:
                res.error = str(e) if pair.prediction in str(e) else f"{pair.prediction}: {e}"
        res.seconds = round(time.perf_counter() - start, 4)
        results.append(res)
        if progress:
            progress(res)
    producers = [{"run": rid, "count": counts[rid], "description": rec.describe_run(runs[rid]), "record": _public(runs[rid])} for rid in runs]
    return EvalReport(p, results, keys, summarise(results, keys), producers=producers, unrecorded=unrecorded,
                      modified=modified, seconds=time.perf_counter() - t0, reference_free=free)


def _public(run: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "outputs" and not k.startswith("_")}


def evaluate_model(
    model: LoadedModel,
    low_dir: str | Path,
    ref_dir: str | Path | None,
    protocol: Protocol | str = "plain",
    *,
    niqe: bool = True,
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    predict_options: Mapping[str, Any] | None = None,
    seed: int | None = None,
    extras: Extras | None = None,
    save_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[ImageResult], None] | None = None,
) -> EvalReport:
    """Enhance each image of ``low_dir`` with ``model`` and measure it against ``ref_dir``.

    ``predict`` replaces ``model.enhance`` (e.g. the mean of n samples of a flow model) and
    ``predict_options`` says how, for the report and the run record. With ``save_dir`` each
    prediction is also written there as an 8-bit PNG (rounded), with a run record beside them.
    ``ref_dir`` None: no references; each enhanced image is measured alone (NIQE, ``extras``'
    no-reference metrics), e.g. on real low-light photos.
    """
    p = get_protocol(protocol)
    free = ref_dir is None
    keys = _keys(free, niqe, extras)
    fn = predict or model.enhance
    t0 = time.perf_counter()
    pairs = list_single(low_dir) if free else pair_files(low_dir, ref_dir, strip_suffix=None)
    options = {"protocol": p.name, "low_dir": str(low_dir), "ref_dir": None if free else str(ref_dir), **(predict_options or {})}
    run = rec.new_run("eval", model=model, options=options, seed=seed)
    save = Path(save_dir) if save_dir is not None else None
    if save is not None and not overwrite:
        clash = [save / f"{q.name}.png" for q in pairs if not q.error and (save / f"{q.name}.png").exists()]
        if clash:
            raise OutputExistsError(f"{clash[0]}: already exists; pass --overwrite to replace it or choose another --save folder")
    results = []
    for pair in pairs:
        start = time.perf_counter()
        res = ImageResult(pair.name, None, pair.reference, error=pair.error, input=pair.prediction)
        if pair.prediction and (pair.reference or free) and res.ok:
            try:
                low = _read(pair.prediction, "low-light input")
                ref = None if free else _read(pair.reference, "reference")
                out = fn(low.rgb)
                if not np.isfinite(out).all():
                    raise InputError(f"{pair.prediction}: the model produced NaN/Inf")
                if ref is None:
                    res.metrics = measure_no_reference(out, p, extras, with_niqe=niqe)
                else:
                    res.metrics, res.gain = measure(out, _to_u8(ref), p, extras, with_niqe=niqe)
                if save is not None:
                    target = save / f"{pair.name}.png"
                    data = encode_image(low.with_rgb(quantise(out, "round").astype(np.float32) / 255), "PNG", bit_depth=8)
                    save.mkdir(parents=True, exist_ok=True)
                    write_bytes_atomic(target, data, overwrite=overwrite)
                    res.prediction = str(target)
                    rec.add_output(run, target, sha256=rec.sha256_bytes(data), input=pair.prediction,
                                   input_sha256=sha256_file(Path(pair.prediction)), seconds=time.perf_counter() - start,
                                   metrics={k: _finite(v) for k, v in res.metrics.items()})
            except LLEError as e:
                res.error = str(e)
            except OSError as e:
                res.error = f"{save or pair.prediction}: {e.strerror or e}"
        res.seconds = round(time.perf_counter() - start, 4)
        results.append(res)
        if progress:
            progress(res)
    mean = summarise(results, keys)
    report = EvalReport(p, results, keys, mean, model={**run["model"], **(predict_options or {})},
                        seconds=time.perf_counter() - t0, reference_free=free)
    if save is not None and run["outputs"]:
        rec.finish_run(run, metrics={"mean": {k: _finite(v) for k, v in mean.items()}, "count": len(run["outputs"])})
        report.records.append(str(rec.write_run(save, run)))
    return report
