"""Drawing diverse enhancements from a conditional flow (LLFlow and its robust variants).

LLFlow learns a distribution of normally exposed images given the dark one: z ~ N(squeeze(g(x_l)), 1)
decoded by the invertible network (paper Sec. 3.2). ``lle enhance`` decodes the mean; here each
sample decodes ``z = squeeze(g(x_l)) + tau * eps + offset`` with ``eps ~ N(0, I)``. ``tau`` scales the
variation (the upstream test script's ``heat`` argument is ignored by its own code; this follows
the paper), ``offset`` shifts the whole latent, which the paper's Fig. 6 shows changes brightness
monotonically (they sweep -0.4 .. 0.4).

Cost: the encoder runs once per image, and each coupling's conditioning-only work (the feature
injector and the feature term of the self-conditional net) once per layer for all samples; latents
go through the coupling networks in chunks sized to the free memory.

Reproducibility: sample ``j`` uses ``eps`` from ``torch.Generator().manual_seed(seed + j)`` (CPU,
float32), the same ``eps`` for every (tau, offset) pair, so a sweep varies only tau/offset. Redraws
of bad samples take seeds ``seed + n``, ``seed + n + 1``, ... in order.

Exploding inverses (Hong et al., ICCV 2023): an affine flow's inverse can blow up far from the
training data. Every sample is checked; non-finite samples are never written, and samples with more
than ``max_out_of_range`` of their values outside [-0.5, 1.5] are flagged (``resample_bad`` redraws
both kinds).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import LLEError, OutputExistsError, UsageError
from .imageio import encode_image, read_image, write_bytes_atomic
from .registry import ModelEntry
from .runner import LoadedModel

__all__ = [
    "OUT_OF_RANGE",
    "SampleStats",
    "Sample",
    "SampleSet",
    "sample_specs",
    "sample_stats",
    "sample_array",
    "ensure_flow_model",
    "can_sample",
    "contact_sheet",
    "SampleOptions",
    "SampleJobResult",
    "check_options",
    "format_number",
    "OutputName",
    "parse_output_name",
    "OWN_OUTPUT_STEM",
    "output_names",
    "normalise_format",
    "run_sample_job",
]

OUT_OF_RANGE = (-0.5, 1.5)  # values outside this are no longer "a slightly over/under-exposed pixel"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MAX_SEED = 2**62  # seeds run up from the base: seed + j, then redraws
ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class SampleStats:
    """What the JSON reports per sample; fractions are over all H * W * 3 values."""

    mean_brightness: float | None  # mean Rec. 601 luma of the written (clamped) image; None if no finite pixel
    nonfinite_fraction: float
    out_of_range_fraction: float  # finite values outside OUT_OF_RANGE
    min: float | None
    max: float | None


def sample_stats(img: np.ndarray) -> SampleStats:
    """Statistics of one unclamped (H, W, 3) sample."""
    finite = np.isfinite(img)
    total = img.size
    n_bad = int(total - finite.sum())
    vals = img[finite]
    lo, hi = OUT_OF_RANGE
    outside = int(np.count_nonzero((vals < lo) | (vals > hi)))
    pix_ok = finite.all(axis=2)
    if pix_ok.any():
        luma = np.clip(img[pix_ok], 0.0, 1.0) @ _LUMA
        brightness: float | None = float(luma.mean())
    else:
        brightness = None
    return SampleStats(
        mean_brightness=brightness,
        nonfinite_fraction=n_bad / total,
        out_of_range_fraction=outside / total,
        min=float(vals.min()) if vals.size else None,
        max=float(vals.max()) if vals.size else None,
    )


# --------------------------------------------------------------------------------------------
# Sampling


@dataclass
class Sample:
    index: int  # j: which eps (seed + j) within its (tau, offset) group
    tau: float
    offset: float
    seed: int | None  # None when tau == 0: nothing random was drawn
    image: np.ndarray  # (H, W, 3) float32, unclamped, may hold NaN/Inf
    stats: SampleStats
    bad: bool
    rejected_seeds: list[int] = field(default_factory=list)  # redraws that were bad too, in order

    @property
    def finite(self) -> bool:
        return self.stats.nonfinite_fraction == 0.0

    @property
    def status(self) -> str:
        """``ok``, ``out_of_range`` (finite but flagged) or ``non_finite`` (never written)."""
        if not self.finite:
            return "non_finite"
        return "out_of_range" if self.bad else "ok"


@dataclass
class SampleSet:
    samples: list[Sample]
    seed: int  # base seed
    batch_size: int  # latents through a coupling network at once (all share each layer's conditioning)
    decoded: int  # latents decoded in all, redraws included

    def groups(self) -> dict[tuple[float, float], list[Sample]]:
        out: dict[tuple[float, float], list[Sample]] = {}
        for s in self.samples:
            out.setdefault((s.tau, s.offset), []).append(s)
        return out

    def mean(self, tau: float, offset: float) -> np.ndarray | None:
        """Mean of the group's finite samples (paper Sec. 3.2: averaging samples improves quality)."""
        good = [s.image for s in self.groups().get((tau, offset), []) if s.finite]
        return np.mean(good, axis=0, dtype=np.float32) if good else None


def sample_specs(n: int, taus: Sequence[float], offsets: Sequence[float]) -> list[tuple[int, float, float]]:
    """``(index, tau, offset)`` of every sample, in output order: n per (tau, offset), 1 when tau is 0."""
    return [(j, t, o) for t in taus for o in offsets for j in range(n if t != 0 else 1)]


def _check_values(n: int, taus: Sequence[float], offsets: Sequence[float], max_tries: int, max_out_of_range: float) -> None:
    if n < 1:
        raise UsageError(f"--n {n}: must be a whole number >= 1 (samples per tau/offset pair)")
    if not taus or not offsets:
        raise UsageError("give at least one --tau and one --z-offset")
    for t in taus:
        if not math.isfinite(t) or t < 0:
            raise UsageError(f"--tau {t:g}: must be a finite number >= 0 (the spread of the latent; 0 = its mean)")
    for o in offsets:
        if not math.isfinite(o):
            raise UsageError(f"--z-offset {o:g}: must be a finite number (the paper sweeps -0.4 to 0.4)")
    if max_tries < 1:
        raise UsageError(f"--max-tries {max_tries}: must be a whole number >= 1")
    if not 0.0 <= max_out_of_range <= 1.0:
        raise UsageError(f"--max-out-of-range {max_out_of_range:g}: must be a fraction between 0 and 1")


_FLOW_METHODS = ("prepare", "condition", "latent_mean", "decode")


def can_sample(family: str) -> bool:
    """Whether models of this family are conditional flows that ``sample_array`` can draw from."""
    from .models import FAMILIES

    spec = FAMILIES.get(family)
    return spec is not None and all(hasattr(spec.model_cls, a) for a in _FLOW_METHODS)


def ensure_flow_model(model: LoadedModel | ModelEntry) -> None:
    """``UsageError`` unless the model can draw samples (a conditional flow such as LLFlow)."""
    entry = model if isinstance(model, ModelEntry) else model.entry
    ok = can_sample(entry.family) if isinstance(model, ModelEntry) else all(hasattr(model.module, a) for a in _FLOW_METHODS)
    if not ok:
        raise UsageError(
            f"model {entry.name} ({entry.family}) is not a flow and cannot draw samples; "
            "use an LLFlow model (e.g. --model llflow), or `lle enhance` for this one"
        )


def _memory_budget(device: torch.device) -> int:
    """Bytes a decode batch may use: half the free GPU memory, or a quarter of the available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] // 2)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return min(int(line.split()[1]) * 1024 // 4, 8 << 30)
    except (OSError, ValueError, IndexError):
        pass
    return 2 << 30


def _auto_batch(model: LoadedModel, padded_hw: tuple[int, int], total: int) -> tuple[int, int]:
    """``(chunk, group)``: latents per coupling-network pass, and latents decoded together.

    The coupling networks' hidden activations bound the chunk; the group (whose conditioning work
    is shared) is bounded by the latent-sized tensors every layer keeps, a few per latent.
    """
    budget = _memory_budget(model.device)
    per = getattr(model.module, "decode_bytes_per_sample", None)
    need = per(*padded_hw) if per else 256 << 20
    chunk = max(1, min(total, budget // max(need, 1)))
    latent_bytes = (padded_hw[0] // 2) * (padded_hw[1] // 2) * 12 * 4 * 6
    return chunk, max(chunk, min(total, budget // max(latent_bytes, 1)))


def _eps(seed: int, shape: torch.Size) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def sample_array(
    model: LoadedModel,
    rgb: np.ndarray,
    *,
    n: int = 1,
    taus: Sequence[float] = (1.0,),
    offsets: Sequence[float] = (0.0,),
    seed: int | None = None,
    batch_size: int | None = None,
    resample_bad: bool = False,
    max_tries: int = 5,
    max_out_of_range: float = 0.01,
    progress: ProgressFn | None = None,
) -> SampleSet:
    """Draw samples for one (H, W, 3) float image in [0, 1]; see the module docstring for the rules.

    ``max_tries`` counts draws per sample (the first included) when ``resample_bad`` is on.
    """
    taus, offsets = [float(t) for t in taus], [float(o) for o in offsets]
    _check_values(n, taus, offsets, max_tries, max_out_of_range)
    ensure_flow_model(model)
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    if seed is None:
        seed = secrets.randbits(31)
    if not 0 <= seed < _MAX_SEED:
        raise UsageError(f"--seed {seed}: use a number between 0 and 2**62")
    module = model.module
    specs = sample_specs(n, taus, offsets)
    x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        lq, pad = module.prepare(x.to(model.device, model.dtype))
        features = module.condition(lq)  # once per image, however many samples
        mu = module.latent_mean(features)
    chunk, group = _auto_batch(model, tuple(lq.shape[-2:]), len(specs))
    if batch_size is not None:
        chunk, group = batch_size, max(batch_size, group)
    eps_cache: dict[int, torch.Tensor] = {}

    def eps(s: int) -> torch.Tensor:
        if s not in eps_cache:
            eps_cache[s] = _eps(s, mu.shape)
        return eps_cache[s]

    decoded = 0
    total_work = len(specs)

    def decode(jobs: list[tuple[float, float, int | None]]) -> list[np.ndarray]:
        """Latents for (tau, offset, seed) -> cropped float32 images.

        ``group`` latents share each layer's conditioning work; ``chunk`` go through a coupling
        network at once.
        """
        nonlocal decoded
        out: list[np.ndarray] = []
        for start in range(0, len(jobs), group):
            part = jobs[start : start + group]

            def layer_done(done: int, layers: int, base: int = decoded, k: int = len(part)) -> None:
                if progress:
                    progress(base + k * done / layers, total_work)

            with torch.inference_mode():
                z = torch.cat([
                    mu + (tau * eps(s).to(mu.device, mu.dtype) if s is not None else 0.0) + off
                    for tau, off, s in part
                ])
                imgs, _ = module.decode(features, z, chunk=chunk, progress=layer_done)
                imgs = pad.crop(imgs).float().cpu().permute(0, 2, 3, 1).numpy()
            out.extend(np.ascontiguousarray(i) for i in imgs)
            decoded += len(part)
        return out

    jobs = [(t, o, seed + j if t != 0 else None) for j, t, o in specs]
    samples = []
    for (j, t, o), (_, _, s), img in zip(specs, jobs, decode(jobs)):
        st = sample_stats(img)
        bad = st.nonfinite_fraction > 0 or st.out_of_range_fraction > max_out_of_range
        samples.append(Sample(j, t, o, s, img, st, bad))

    if resample_bad:
        next_seed = seed + n
        for _ in range(max_tries - 1):
            todo = [s for s in samples if s.bad and s.tau != 0]  # tau 0 is deterministic: a redraw is the same
            if not todo:
                break
            new_seeds = list(range(next_seed, next_seed + len(todo)))
            next_seed += len(todo)
            total_work += len(todo)
            for smp, new, img in zip(todo, new_seeds, decode([(s.tau, s.offset, ns) for s, ns in zip(todo, new_seeds)])):
                st = sample_stats(img)
                smp.rejected_seeds.append(smp.seed)
                smp.seed, smp.image, smp.stats = new, img, st
                smp.bad = st.nonfinite_fraction > 0 or st.out_of_range_fraction > max_out_of_range
    return SampleSet(samples, seed, chunk, decoded)


# --------------------------------------------------------------------------------------------
# Contact sheet


_MAGENTA = np.array([255, 0, 255], dtype=np.uint8)


def contact_sheet(
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    rows: Sequence[Sequence[int]] | None = None,
    columns: int = 5,
    cell: int = 256,
    flagged: Sequence[bool] = (),
) -> np.ndarray:
    """Lay samples out in a grid with a caption under each; returns (H, W, 3) uint8.

    ``rows`` lists the image indices of each row (e.g. one row per (tau, offset)); by default the
    images fill rows of ``columns``. Thumbnails are ``cell`` pixels on their long side. Non-finite
    pixels are painted magenta, never black, and flagged captions are red.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if rows is None:
        rows = [list(range(i, min(i + columns, len(images)))) for i in range(0, len(images), columns)]
    h, w = images[0].shape[:2]
    scale = cell / max(h, w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.multiline_textbbox((0, 0), lbl, font=font, spacing=2) for lbl in labels]
    pitch_x = max(tw, *(b[2] + 4 for b in boxes))
    caption_h = max(b[3] for b in boxes) + 8
    pad = 6
    ncols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (pad + ncols * (pitch_x + pad), pad + len(rows) * (th + caption_h + pad)), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    flags = list(flagged) + [False] * (len(images) - len(flagged))
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST
    for r, row in enumerate(rows):
        for c, i in enumerate(row):
            img = images[i]
            finite = np.isfinite(img).all(axis=2)
            u8 = np.rint(np.clip(np.nan_to_num(img, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0) * 255).astype(np.uint8)
            u8[~finite] = _MAGENTA
            x0, y0 = pad + c * (pitch_x + pad), pad + r * (th + caption_h + pad)
            sheet.paste(Image.fromarray(u8).resize((tw, th), resample), (x0, y0))
            colour = (255, 80, 80) if flags[i] else (230, 230, 230)
            draw.multiline_text((x0 + 2, y0 + th + 4), labels[i], fill=colour, font=font, spacing=2)
    return np.asarray(sheet)


# --------------------------------------------------------------------------------------------
# Files: one input image -> its samples, mean and contact sheet on disk


@dataclass(frozen=True)
class SampleOptions:
    n: int = 1
    taus: tuple[float, ...] = (1.0,)
    offsets: tuple[float, ...] = (0.0,)
    seed: int | None = None
    mean: bool = False
    sheet: bool = True
    resample_bad: bool = False
    max_tries: int = 5
    max_out_of_range: float = 0.01
    batch_size: int | None = None
    format: str | None = None  # None: the input's (PNG for stdin)
    quality: int = 95
    bit_depth: int | None = None
    overwrite: bool = False
    skip_existing: bool = False  # an input whose outputs all exist and read back as images is not drawn again


def check_options(opts: SampleOptions) -> None:
    """``UsageError`` naming the flag and its accepted range for any value a job would refuse.

    Cheap (no file, no model): callers run it before any heavy work so that a typo fails at once.
    """
    _check_values(opts.n, opts.taus, opts.offsets, opts.max_tries, opts.max_out_of_range)
    if opts.batch_size is not None and opts.batch_size < 1:
        raise UsageError(f"--batch-size {opts.batch_size}: must be a whole number >= 1")
    if opts.seed is not None and not 0 <= opts.seed < _MAX_SEED:
        raise UsageError(f"--seed {opts.seed}: must be a whole number from 0 to 2**62 - 1")
    if not 1 <= opts.quality <= 100:
        raise UsageError(f"--quality {opts.quality}: must be a whole number from 1 to 100")
    if opts.bit_depth not in (None, 8, 16):
        raise UsageError(f"--bit-depth {opts.bit_depth}: must be 8 or 16")


@dataclass
class SampleJobResult:
    input: str
    model: str
    # "ok" (all samples written), "partial" (some not written), "skipped" (skip_existing found them all) or "error"
    status: str
    error: str | None = None
    seed: int | None = None
    batch_size: int | None = None
    seconds: float = 0.0
    sheet: str | None = None
    samples: list[dict[str, object]] = field(default_factory=list)
    means: list[dict[str, object]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp"}


def normalise_format(fmt: str | None) -> str | None:
    """``jpg``/``tif``/... -> the canonical name, or ``UsageError`` for a format we do not write."""
    if fmt is None:
        return None
    name = {"JPG": "JPEG", "TIF": "TIFF"}.get(fmt.strip().upper().lstrip("."), fmt.strip().upper().lstrip("."))
    if name not in _SUFFIXES:
        raise UsageError(f"--format {fmt!r}: expected one of png, jpeg, tiff, webp, bmp")
    return name


def _fmt_tau(t: float) -> str:
    return f"{t:g}"


def _fmt_off(o: float) -> str:
    return f"{o:+g}" if o != 0 else "0"


def format_number(x: float) -> str:
    """The shortest text that reads back (``float``) as exactly ``x``, made of ``0-9 . - e`` only.

    ``1``, ``0.5``, ``-0.2``, ``1e-05``, ``1e16``: Python's shortest round-trip repr without the
    ``.0`` of whole numbers and the ``+`` of exponents, which some tools treat specially in names.
    """
    x = float(x) + 0.0  # -0.0 and 0.0 are the same latent: one name
    if not math.isfinite(x):
        raise ValueError(f"{x} has no file-name form; tau and offset must be finite")
    return repr(x).removesuffix(".0").replace("e+", "e")


_NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"  # what format_number writes
_SAMPLE_NAME = re.compile(
    rf"^(?P<stem>.+)_(?:sample(?P<index>\d+)|mean)_tau(?P<tau>{_NUMBER})_off(?P<offset>{_NUMBER})(?P<suffix>\.[A-Za-z]\w*)?$"
)
# Stems of every file `lle sample` writes, today's names and the older ones whose tau/offset tags were
# optional, so that sampling a folder again never takes earlier outputs for photos.
OWN_OUTPUT_STEM = re.compile(r"_(?:sample\d+|mean)(?:_tau[^_]+)?(?:_off[^_]+)?$|_sheet(?:_tau[^_]+_off[^_]+)?$")
_SHEET_TAG_MAX = 80  # characters per value list in a sheet's name; longer sweeps are named by their range


@dataclass(frozen=True)
class OutputName:
    """What a sample's or mean's file name says: ``index`` is None for a mean."""

    stem: str
    index: int | None
    tau: float
    offset: float
    suffix: str = ""


def parse_output_name(name: str) -> OutputName | None:
    """Read back ``<stem>_sample<j>_tau<t>_off<o>[.ext]`` or ``<stem>_mean_tau<t>_off<o>[.ext]``; None otherwise."""
    m = _SAMPLE_NAME.match(name)
    if m is None:
        return None
    index = int(m["index"]) if m["index"] is not None else None
    return OutputName(m["stem"], index, float(m["tau"]), float(m["offset"]), m["suffix"] or "")


def _pair_tag(tau: float, offset: float) -> str:
    return f"_tau{format_number(tau)}_off{format_number(offset)}"


def _list_tag(values: Sequence[float]) -> str:
    text = ",".join(format_number(v) for v in values)
    if len(text) <= _SHEET_TAG_MAX:
        return text
    return f"{format_number(min(values))}..{format_number(max(values))}"  # file names stop at 255 bytes


def output_names(stem: str, suffix: str, opts: SampleOptions) -> tuple[list[str], dict[tuple[float, float], str], str | None]:
    """File names (no directory) of every sample, of each group's mean (if asked), and of the sheet.

    ``<stem>_sample<j>_tau<t>_off<o>``, ``<stem>_mean_tau<t>_off<o>`` and
    ``<stem>_sheet_tau<t1,t2..>_off<o1,o2..>.png``, numbers as ``format_number`` writes them. Every
    name carries its tau and offset, even when only one value of each is given, so runs with other
    values into the same folder never collide; ``parse_output_name`` reads them back.
    """
    specs = sample_specs(opts.n, opts.taus, opts.offsets)
    width = max(2, len(str(opts.n - 1)))
    samples = [f"{stem}_sample{j:0{width}d}{_pair_tag(t, o)}{suffix}" for j, t, o in specs]
    means = {(t, o): f"{stem}_mean{_pair_tag(t, o)}{suffix}" for t in opts.taus for o in opts.offsets} if opts.mean else {}
    sheet = f"{stem}_sheet_tau{_list_tag(opts.taus)}_off{_list_tag(opts.offsets)}.png" if opts.sheet else None
    return samples, means, sheet


def _label(s: Sample) -> str:
    head = f"#{s.index} tau={_fmt_tau(s.tau)} off={_fmt_off(s.offset)}"
    tail = f"seed {s.seed}" if s.seed is not None else "mean latent"
    if s.status == "non_finite":
        tail += f"  NON-FINITE {s.stats.nonfinite_fraction:.1%}"
    elif s.status == "out_of_range":
        tail += f"  OUT OF RANGE {s.stats.out_of_range_fraction:.1%}"
    return f"{head}\n{tail}"


def _sheet_rows(samples: Sequence[Sample], width: int = 8) -> list[list[int]]:
    """One row per (tau, offset) when there are several (wrapped at ``width``); else rows of 5."""
    groups: dict[tuple[float, float], list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault((s.tau, s.offset), []).append(i)
    if len(groups) == 1:
        width = 5
    return [idx[k : k + width] for idx in groups.values() for k in range(0, len(idx), width)]


def _encode_png(rgb_u8: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb_u8).save(buf, format="PNG")
    return buf.getvalue()


def _complete(path: Path) -> bool:
    """Whether ``path`` is a finished output: an image that decodes, not a truncated or foreign file."""
    if not path.is_file():
        return False
    try:
        read_image(path)
    except LLEError:
        return False
    return True


def run_sample_job(
    model: LoadedModel,
    input: str,
    out_dir: str | Path | None,
    opts: SampleOptions,
    *,
    stdin: bytes | None = None,
    progress: ProgressFn | None = None,
) -> SampleJobResult:
    """Read one image, draw its samples and write them (plus mean and sheet); errors become the result.

    Every output path is checked before any work: existing files are never replaced without
    ``overwrite``. Non-finite samples are not written (their entry has ``output: None``). With
    ``skip_existing``, an input whose outputs all exist and read back as images is not drawn again
    (status ``skipped``). An interrupt (``KeyboardInterrupt``) removes the files this job wrote,
    then propagates: an input is on disk whole or not at all.
    """
    start = time.perf_counter()
    res = SampleJobResult(input=input, model=model.name, status="error")
    written: list[Path] = []
    try:
        check_options(opts)
        pic = read_image(stdin if stdin is not None else b"", name="<stdin>") if input == "-" else read_image(input)
        fmt = normalise_format(opts.format) or (pic.format if input != "-" and pic.format in _SUFFIXES else "PNG")
        stem = "stdin" if input == "-" else Path(input).stem
        folder = Path(out_dir) if out_dir is not None else (Path.cwd() if input == "-" else Path(input).parent)
        names, mean_names, sheet_name = output_names(stem, _SUFFIXES[fmt], opts)
        planned = [folder / p for p in [*names, *mean_names.values(), *([sheet_name] if sheet_name else [])]]
        if opts.skip_existing and input != "-":  # piped bytes may be another image under the same name
            incomplete = next((p for p in planned if not _complete(p)), None)
            if incomplete is None:
                res.status = "skipped"
                res.seconds = round(time.perf_counter() - start, 4)
                return res
            present = sum(os.path.lexists(p) for p in planned)
            if present and not opts.overwrite:
                # a mix of old and new files would look like one run's output and be neither
                raise OutputExistsError(
                    f"{input}: {present} of its {len(planned)} outputs exist but {incomplete} is missing or unreadable "
                    "(a run that stopped part way, or a non-finite sample); pass --overwrite to draw this input again"
                )
        if not opts.overwrite:
            clash = next((p for p in planned if os.path.lexists(p)), None)
            if clash is not None:
                raise OutputExistsError(f"{clash}: already exists; pass --overwrite to replace it or choose another -o")
        folder.mkdir(parents=True, exist_ok=True)
        drawn = sample_array(
            model, pic.rgb, n=opts.n, taus=opts.taus, offsets=opts.offsets, seed=opts.seed,
            batch_size=opts.batch_size, resample_bad=opts.resample_bad, max_tries=opts.max_tries,
            max_out_of_range=opts.max_out_of_range, progress=progress,
        )
        res.seed, res.batch_size = drawn.seed, drawn.batch_size

        def write(path: Path, rgb: np.ndarray) -> None:
            data = encode_image(pic.with_rgb(np.clip(rgb, 0.0, 1.0)), fmt, quality=opts.quality, bit_depth=opts.bit_depth)
            write_bytes_atomic(path, data, overwrite=opts.overwrite)
            written.append(path)

        for s, name in zip(drawn.samples, names):
            path = folder / name
            if s.finite:
                write(path, s.image)
            entry = {"index": s.index, "tau": s.tau, "offset": s.offset, "seed": s.seed,
                     "output": str(path) if s.finite else None, "status": s.status, **asdict(s.stats),
                     "rejected_seeds": s.rejected_seeds}
            res.samples.append(entry)
        for (t, o), name in mean_names.items():
            m = drawn.mean(t, o)
            group = drawn.groups()[(t, o)]
            path = folder / name
            if m is not None:
                write(path, m)
            res.means.append({"tau": t, "offset": o, "output": str(path) if m is not None else None,
                              "n": sum(s.finite for s in group)})
        if sheet_name:
            grid = contact_sheet([s.image for s in drawn.samples], [_label(s) for s in drawn.samples],
                                 rows=_sheet_rows(drawn.samples), flagged=[s.bad for s in drawn.samples])
            write_bytes_atomic(folder / sheet_name, _encode_png(grid), overwrite=opts.overwrite)
            written.append(folder / sheet_name)
            res.sheet = str(folder / sheet_name)
        res.status = "ok" if all(s.finite for s in drawn.samples) else "partial"
        if res.status == "partial":
            bad = sum(not s.finite for s in drawn.samples)
            res.error = (f"{input}: {bad} sample(s) had non-finite values and were not written"
                         + ("" if opts.resample_bad else "; pass --resample-bad to redraw them"))
    except LLEError as e:
        res.error = str(e)
    except OSError as e:
        res.error = f"{input}: {e.strerror or e}"
    except BaseException:
        # Ctrl-C between two writes: the caller has printed none of these files, and --skip-existing
        # must find this input absent (redrawn whole), not half done
        for path in written:
            path.unlink(missing_ok=True)
        raise
    res.seconds = round(time.perf_counter() - start, 4)
    return res

