"""Train LLFlow (Wang et al., AAAI 2022) on paired low/normal-light images, affine or RQ-spline couplings.

The objective is the flow's negative log-likelihood of the normal-light image given the low-light one,
in bits per pixel (paper eq. 4 and 8): the latent mean is the encoder's colour map g(x_l), except that
with probability ``p`` (upstream ``train_gt_ratio``, 0.2) a sample's mean is the chromaticity of its own
target, ``squeeze(gt / sum_c gt)``, which teaches the flow the colour-map convention independently
of how good g already is. Upstream draws that choice once per batch; here it is drawn per sample.

Data as the official ``LoL_dataset``: the low image's histogram equalisation is computed on the **full**
image, then the low image, its equalisation and the target are cropped at the same random position
and flipped horizontally together (p = 0.5); the network input is ``cat(log(low + 1e-3), histeq)``.
Crops are not padded (the patch must be a multiple of 8; the official 160 is).

Optimisation as ``LOL_smallNet.yml``: Adam (lr 5e-4, betas 0.9/0.99, no weight decay), the learning
rate halved at 50/75/90/95 % of the iterations, no dequantisation noise (upstream's training forward
leaves ``add_gt_noise`` off; ``dequantize`` turns it on with upstream's formula, quant 32). Fresh runs
start with Glow's data-dependent ActNorm initialisation on the first batch, as upstream's first
iteration does. A step whose loss or gradients are not finite is skipped, as upstream's GradScaler
skips it; too many in a row stop the run. Not reproduced: upstream's delayed encoder training
(the encoder trains from the first step here).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..atomic import write_text_atomic
from ..errors import InputError, UsageError
from ..formats import list_image_files
from ..models.llflow import LLFlow, LLFlowConfig
from ..flows.layers import squeeze2d
from ..models.llflow.model import negative_log_likelihood
from ..models.llflow.preprocess import equalize_hist, log_image
from .common import (
    Dist, MetricsLog, RunOptions, TrainResult, all_reduce_mean, barrier, batch_indices, checkpoint_path,
    jsonable, open_run, prune_checkpoints, read_rgb, resume_training, run_distributed, save_checkpoint, save_trained_weights,
    step_generator, wrap_ddp,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "PRESETS",
    "LLFlowTrainConfig",
    "TrainResult",
    "Pair",
    "architecture",
    "find_pairs",
    "load_pairs",
    "make_batch",
    "FlowNLL",
    "train_step",
    "lr_at",
    "validate",
    "train_llflow",
    "half_precision_copy",
]

# Named architectures (LLFlowConfig fields); "tiny" is the project's CPU-sized demonstration model.
PRESETS: dict[str, dict[str, Any]] = {
    "standard": {},  # LOL-pc.yml
    "small": {"nf": 32, "nb": 4, "K": 4, "stack_blocks": [1]},  # LOL_smallNet.yml
    "tiny": {"nf": 32, "nb": 2, "K": 2, "hidden_channels": 32, "stack_blocks": [1]},
}
COUPLINGS = ("affine", "rqs")
# settings that may change between a run and its resumption (a longer run keeps the steps already
# taken; its learning-rate schedule is that of the new length from then on)
RESUMABLE = frozenset({"iterations", "checkpoint_every", "keep_checkpoints", "log_every", "val_every", "val_samples"})
MAX_SKIPPED_IN_A_ROW = 20


@dataclass(frozen=True)
class LLFlowTrainConfig:
    """Hyper-parameters; the defaults are the paper's light model (``LOL_smallNet.yml``)."""

    model: str = "small"  # a preset name or a JSON/YAML file of LLFlowConfig fields
    coupling: str = "affine"
    iterations: int = 45_000
    batch_size: int = 16
    patch: int = 160
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.99)
    lr_milestones: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95)  # fractions of ``iterations``
    lr_gamma: float = 0.5
    gt_mean_probability: float = 0.2  # p: the target's chromaticity as the latent mean
    dequantize: bool = False
    quant: int = 32
    flip: bool = True
    max_grad_norm: float = 0.0  # 0: no clipping (upstream)
    precision: str = "fp32"  # or "bf16" (autocast, CUDA only)
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    val_every: int = 0  # 0: validate only at the end (when a validation set is given)
    val_samples: int = 4  # latents per image at tau = 1 for the non-finite fraction


# ---- architecture -----------------------------------------------------------------------------
def architecture(model: str, coupling: str) -> dict[str, Any]:
    """The LLFlowConfig fields (JSON types) of a preset name or a JSON/YAML file, with ``coupling``."""
    if coupling not in COUPLINGS:
        raise UsageError(f"--coupling {coupling!r}: expected one of {', '.join(COUPLINGS)}")
    if model in PRESETS:
        arch = dict(PRESETS[model])
    else:
        path = Path(model)
        if not path.is_file():
            raise UsageError(f"--config {model!r}: not a preset ({', '.join(PRESETS)}) nor an existing JSON/YAML file")
        try:
            text = path.read_text()
            if path.suffix.lower() in (".yml", ".yaml"):
                try:
                    import yaml  # optional: JSON configs need nothing extra
                except ImportError:
                    raise UsageError(f"--config {model}: YAML configs need PyYAML (pip install pyyaml); or write the config as JSON") from None
                arch = yaml.safe_load(text)
            else:
                arch = json.loads(text)
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 - OSError, JSON and YAML errors alike
            raise InputError(f"{path}: cannot read the model config ({e})") from e
        if not isinstance(arch, dict):
            raise InputError(f"{path}: the model config must be a mapping of LLFlowConfig fields")
    known = {f.name for f in fields(LLFlowConfig)}
    unknown = sorted(set(arch) - known)
    if unknown:
        raise UsageError(f"model config: unknown fields {unknown}; known: {sorted(known)}")
    arch["coupling"] = coupling
    try:
        _llflow_config(arch)
    except ValueError as e:
        raise UsageError(f"model config: {e}") from e
    return jsonable(arch)


def _llflow_config(arch: Mapping[str, Any]) -> LLFlowConfig:
    return LLFlowConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()})


# ---- data ---------------------------------------------------------------------------------------
@dataclass
class Pair:
    """One training pair in memory: uint8 (3, H, W) low, its full-image histeq, and the target."""

    name: str
    low: torch.Tensor
    histeq: torch.Tensor
    high: torch.Tensor


def _image_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in list_image_files(folder, recursive=False)}


def find_pairs(data: Path) -> list[tuple[Path, Path]]:
    """(low, high) paths: a folder with ``low/`` and ``high/`` (same file stems), or a CSV/JSON list.

    CSV: rows ``low,high`` (a header row ``low,high`` is optional); JSON: ``[[low, high], ...]`` or
    ``[{"low": ..., "high": ...}, ...]``. Relative paths are relative to the list file.
    """
    data = Path(data)
    if data.is_dir():
        low_dir, high_dir = data / "low", data / "high"
        if not (low_dir.is_dir() and high_dir.is_dir()):
            raise InputError(f"{data}: expected sub-folders low/ and high/ (the LOL layout), or pass a CSV/JSON list of pairs")
        lows, highs = _image_files(low_dir), _image_files(high_dir)
        missing = sorted(set(lows) - set(highs))
        if missing:
            raise InputError(f"{lows[missing[0]]}: no image named {missing[0]}.* in {high_dir} "
                             f"({len(missing)} of {len(lows)} low images have no pair)")
        pairs = [(lows[k], highs[k]) for k in sorted(lows)]
    elif data.is_file():
        rows: list[tuple[str, str]] = []
        try:
            if data.suffix.lower() == ".json":
                raw = json.loads(data.read_text())
                for item in raw:
                    rows.append((item["low"], item["high"]) if isinstance(item, dict) else (item[0], item[1]))
            else:
                with open(data, newline="", encoding="utf-8") as f:
                    for row in csv.reader(f):
                        if not row or row[0].strip().lower() == "low":
                            continue
                        rows.append((row[0].strip(), row[1].strip()))
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise InputError(f"{data}: cannot read the list of pairs ({e}); expected CSV rows low,high or JSON [[low, high], ...]") from e
        pairs = [((data.parent / lo), (data.parent / hi)) for lo, hi in rows]
        for lo, hi in pairs:
            for p in (lo, hi):
                if not p.is_file():
                    raise InputError(f"{p}: listed in {data} but not found")
    else:
        raise InputError(f"{data}: no such folder or list of pairs")
    if not pairs:
        raise InputError(f"{data}: no training pairs found")
    return pairs


def _u8(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(read_rgb(path), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_pairs(pairs: Sequence[tuple[Path, Path]], patch: int | None = None) -> list[Pair]:
    """Read every pair (and equalise the full low image, as upstream); check sizes against ``patch``."""
    out = []
    for lo, hi in pairs:
        low, high = _u8(lo), _u8(hi)
        if low.shape != high.shape:
            raise InputError(f"{lo}: {tuple(low.shape[1:])} pixels but its pair {hi} has {tuple(high.shape[1:])}; pairs must be aligned")
        if patch is not None and min(low.shape[1:]) < patch:
            raise InputError(f"{lo}: {low.shape[2]}x{low.shape[1]} is smaller than --patch {patch}; use a smaller patch or remove it")
        out.append(Pair(Path(lo).stem, low, equalize_hist(low), high))
    return out


def network_input_u8(low: torch.Tensor, histeq: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) low image and histeq -> the training input ``cat(log(low/255 + 1e-3), histeq/255)``."""
    return torch.cat([log_image(low.float() / 255.0), histeq.float() / 255.0], dim=1)


def make_batch(pairs: Sequence[Pair], idx: torch.Tensor, g: torch.Generator, patch: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops (same position in low, histeq and target) and horizontal flips -> (lq, gt)."""
    lows, hists, highs = [], [], []
    r = torch.rand(len(idx), 3, generator=g)
    for i, k in enumerate(idx.tolist()):
        p = pairs[k]
        h, w = p.low.shape[1:]
        top = int(r[i, 0] * (h - patch + 1))
        left = int(r[i, 1] * (w - patch + 1))
        crop = (slice(None), slice(top, top + patch), slice(left, left + patch))
        lo, he, hi = p.low[crop], p.histeq[crop], p.high[crop]
        if flip and r[i, 2] < 0.5:
            lo, he, hi = lo.flip(-1), he.flip(-1), hi.flip(-1)
        lows.append(lo)
        hists.append(he)
        highs.append(hi)
    return network_input_u8(torch.stack(lows), torch.stack(hists)), torch.stack(highs).float() / 255.0


# ---- objective ------------------------------------------------------------------------------
class FlowNLL(nn.Module):
    """Per-sample NLL in bits per pixel of ``gt`` given ``lq`` (a module so that DDP sees the forward)."""

    def __init__(self, model: LLFlow, *, quant: int = 32) -> None:
        super().__init__()
        self.model = model
        self.quant = quant

    def forward(self, lq: torch.Tensor, gt: torch.Tensor, gt_mean: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``gt_mean`` (B,) bool picks the target-chromaticity mean; ``noise`` in [0, 1) dequantises."""
        m = self.model
        pixels = gt.shape[2] * gt.shape[3]
        x = gt if noise is None else gt + (noise - 0.5) / self.quant
        features = m.condition(lq)
        z, logdet = m.encode(x, features)
        if noise is not None:
            logdet = logdet - math.log(self.quant) * pixels
        chroma = squeeze2d(gt / (gt.sum(dim=1, keepdim=True) + 1e-4), m.config.downscale)
        # torch.where keeps the colour-map head in the graph even when no sample uses it (DDP needs that)
        mean = torch.where(gt_mean.view(-1, 1, 1, 1), chroma, m.latent_mean(features))
        return negative_log_likelihood(z.float(), mean.float(), logdet.float(), pixels)


def lr_at(cfg: LLFlowTrainConfig, step: int) -> float:
    """MultiStepLR: ``lr * gamma ** (number of milestones passed)`` at 1-based ``step``."""
    passed = sum(step > int(f * cfg.iterations) for f in cfg.lr_milestones)
    return cfg.lr * cfg.lr_gamma**passed


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def train_step(
    objective: nn.Module, opt: torch.optim.Optimizer, lq: torch.Tensor, gt: torch.Tensor, gt_mean: torch.Tensor,
    noise: torch.Tensor | None = None, *, max_grad_norm: float = 0.0, precision: str = "fp32",
) -> tuple[float, bool]:
    """One optimiser step on the batch mean NLL; returns (NLL before the step, whether it was taken)."""
    with _autocast(lq.device, precision):
        nll = objective(lq, gt, gt_mean, noise).mean()
    opt.zero_grad(set_to_none=True)
    value = float(nll.detach())
    if not math.isfinite(value):
        return value, False
    nll.backward()
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    if max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return value, False
    opt.step()
    return value, True


# ---- validation -----------------------------------------------------------------------------
@torch.no_grad()
def validate(model: LLFlow, pairs: Sequence[Pair], *, samples: int = 4, seed: int = 0) -> dict[str, float]:
    """Held-out figures of a training run, so that it can be judged before it ends.

    ``val_nll``: the NLL (bits/pixel) of each target given its low image, on the largest crop whose
    sides are multiples of 8 (the colour-map mean, as at test time). ``val_psnr`` / ``val_ssim``: the
    tau = 0 output (8-bit, as ``lle eval``). ``val_psnr_tau1`` and ``val_block``: the first tau = 1
    sample of each image, its PSNR and its block-artefact ratio (``metrics.block_ratio``).
    ``val_nonfinite``: the fraction of ``samples`` tau = 1 samples per image with any Inf/NaN.
    """
    from ..metrics import block_ratio, psnr, ssim

    was_training = model.training
    model.eval()
    nll, ps, ss, ps1, blocks, bad, total = [], [], [], [], [], 0, 0
    dev = next(model.parameters()).device

    def u8(t: torch.Tensor) -> np.ndarray:
        return t.clamp(0, 1).mul(255).round().permute(1, 2, 0).cpu().numpy()

    try:
        for i, p in enumerate(pairs):
            h8, w8 = (p.low.shape[1] // 8) * 8, (p.low.shape[2] // 8) * 8
            lq8 = network_input_u8(p.low[None, :, :h8, :w8], p.histeq[None, :, :h8, :w8]).to(dev)
            gt8 = p.high[None, :, :h8, :w8].float().div(255.0).to(dev)
            f8 = model.condition(lq8)
            z, logdet = model.encode(gt8, f8)
            nll.append(float(negative_log_likelihood(z.float(), model.latent_mean(f8).float(), logdet.float(), h8 * w8)[0]))
            del f8, z

            x = p.low.float().div(255.0).unsqueeze(0).to(dev)
            lq, pad = model.prepare(x)
            features = model.condition(lq)
            mean = model.latent_mean(features)
            out, _ = model.decode(features, mean)
            y = pad.crop(out)[0]
            ref = p.high.permute(1, 2, 0).numpy()
            finite = bool(torch.isfinite(y).all())
            ps.append(psnr(u8(y), ref) if finite else float("nan"))
            ss.append(ssim(u8(y), ref) if finite else float("nan"))
            if samples > 0:
                g = torch.Generator().manual_seed(seed * 1_000_003 + i)
                eps = torch.randn((samples, *mean.shape[1:]), generator=g).to(dev, mean.dtype)
                imgs, _ = model.decode(features, mean + eps)
                ok = torch.isfinite(imgs.flatten(1)).all(dim=1)
                bad += int((~ok).sum())
                total += samples
                if bool(ok[0]):
                    s1 = u8(pad.crop(imgs[:1])[0])
                    ps1.append(psnr(s1, ref))
                    blocks.append(block_ratio(s1))
    finally:
        model.train(was_training)

    def mean_of(v: list[float]) -> float:
        return float(np.mean(v)) if v else math.nan

    return {
        "val_nll": mean_of(nll),
        "val_psnr": mean_of(ps),
        "val_ssim": mean_of(ss),
        "val_psnr_tau1": mean_of(ps1),
        "val_block": mean_of(blocks),
        "val_nonfinite": bad / total if total else math.nan,
    }


# ---- the trainer ----------------------------------------------------------------------------
def _check(cfg: LLFlowTrainConfig) -> None:
    if cfg.iterations < 1 or cfg.batch_size < 1:
        raise UsageError("--iterations and --batch-size must be positive")
    if cfg.patch < 8 or cfg.patch % 8:
        raise UsageError(f"--patch {cfg.patch}: must be a positive multiple of 8 (the flow squeezes by 8)")
    if not 0.0 <= cfg.gt_mean_probability <= 1.0:
        raise UsageError(f"--gt-mean-probability {cfg.gt_mean_probability}: must be in [0, 1]")
    if cfg.precision not in ("fp32", "bf16"):
        raise UsageError(f"--precision {cfg.precision!r}: expected fp32 or bf16")
    if cfg.lr <= 0 or cfg.quant < 1:
        raise UsageError("--lr must be positive")


def train_llflow(
    data: Path,
    output: Path,
    cfg: LLFlowTrainConfig | None = None,
    *,
    val_data: Path | None = None,
    init_weights: Path | None = None,
    **run: Unpack[RunOptions],
) -> TrainResult:
    """Train LLFlow on the pairs of ``data``; write the final weights (safetensors) to ``output``.

    ``init_weights``: start from these LLFlow weights instead of a fresh initialisation.
    ``run``: ``run_dir``, ``resume``, ``device``, ``log`` and ``progress(step, total, nll, it_per_s)``,
    called after every step (rank 0 only) (``RunOptions``).
    """
    cfg = cfg or LLFlowTrainConfig()
    _check(cfg)
    arch = architecture(cfg.model, cfg.coupling)
    return run_distributed(lambda *a: _train(Path(data), val_data, init_weights, cfg, arch, *a), output, cfg.batch_size, run)


def _train(data, val_data, init_weights, cfg, arch, output, run_dir, resume, d: Dist, dev, local_batch, progress, say) -> TrainResult:
    if cfg.precision == "bf16" and dev.type != "cuda":
        raise UsageError("--precision bf16 needs a CUDA device; the CPU trains in fp32")
    cfg_json = jsonable(asdict(cfg))
    cfg_json["architecture"] = arch
    ck = open_run(run_dir, resume, trainer="llflow", label="LLFlow", config=cfg_json, total_steps=cfg.iterations,
                  ignore=RESUMABLE, extend_hint="pass --iterations larger than that to train on")
    files = find_pairs(data)
    pairs = load_pairs(files, cfg.patch)
    val_pairs = load_pairs(find_pairs(val_data)) if (val_data is not None and d.is_main) else []
    say(f"{len(pairs)} training pairs" + (f", {len(val_pairs)} validation pairs" if val_pairs else ""))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LLFlow(_llflow_config(arch))
    if init_weights is not None:
        from ..models import load_state_strict
        from ..weights import load_upstream_checkpoint

        load_state_strict(model, load_upstream_checkpoint(Path(init_weights)), source=str(init_weights))
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)
    start = resume_training(ck, "llflow", model, opt, say, unit="iteration")
    if ck is None and init_weights is None:
        # upstream's first iteration: every ActNorm normalises its input on the first batch
        lq, gt = make_batch(pairs, batch_indices(len(pairs), 1, local_batch, cfg.seed, d), step_generator(cfg.seed, 1, d.rank), cfg.patch, cfg.flip)
        model.initialize_actnorms(None, gt.to(dev), lq=lq.to(dev))
    objective = wrap_ddp(FlowNLL(model, quant=cfg.quant), d, dev)  # DDP also broadcasts rank 0's weights
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=d.is_main, resume_step=start if ck else None)
    if d.is_main:
        (run_dir / "config.json").write_text(json.dumps({"trainer": "llflow", "config": cfg_json}, indent=2) + "\n")

    def save(step: int, extra: Mapping[str, Any]) -> None:
        if d.is_main:
            meta = {"trainer": "llflow", "config": cfg_json, "metrics": jsonable(dict(extra))}
            save_checkpoint(checkpoint_path(run_dir / "checkpoints", step), step=step, modules={"llflow": model},
                            optimizers={"llflow": opt}, meta=meta)
            prune_checkpoints(run_dir / "checkpoints", cfg.keep_checkpoints)
        barrier(d)

    t0 = time.perf_counter()
    t_last, s_last = t0, start
    loss_value, skipped_row, skipped = math.nan, 0, 0
    window: list[float] = []
    last: dict[str, Any] = {}
    for step in range(start + 1, cfg.iterations + 1):
        g = step_generator(cfg.seed, step, d.rank)
        idx = batch_indices(len(pairs), step, local_batch, cfg.seed, d)
        lq, gt = make_batch(pairs, idx, g, cfg.patch, cfg.flip)
        gt_mean = torch.rand(len(idx), generator=g) < cfg.gt_mean_probability
        noise = torch.rand(gt.shape, generator=g).to(dev) if cfg.dequantize else None
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        value, taken = train_step(objective, opt, lq.to(dev), gt.to(dev), gt_mean.to(dev), noise,
                                  max_grad_norm=cfg.max_grad_norm, precision=cfg.precision)
        if d.enabled:  # every rank must skip together, or their weights would drift apart
            taken = all_reduce_mean(float(taken), d, dev) == 1.0
        skipped_row = 0 if taken else skipped_row + 1
        skipped += not taken
        if skipped_row >= MAX_SKIPPED_IN_A_ROW:
            raise FloatingPointError(f"training diverged: {skipped_row} steps in a row had non-finite NLL or gradients "
                                     f"(iteration {step}); lower --lr or set --max-grad-norm")
        if math.isfinite(value):
            window.append(value)
        if step % cfg.log_every == 0 or step == cfg.iterations or step == start + 1:
            now = time.perf_counter()
            loss_value = all_reduce_mean(float(np.mean(window)) if window else math.nan, d, dev)
            row: dict[str, Any] = {"nll": loss_value, "lr": lr, "skipped": skipped,
                                   "it_per_s": (step - s_last) / max(now - t_last, 1e-9)}
            if d.enabled:
                row["rank_spread"] = _rank_spread(model, d, dev)
            metrics.write(step, **row)
            last = row
            window, t_last, s_last = [], now, step
        if progress:
            progress(step, cfg.iterations, loss_value, (step - start) / max(time.perf_counter() - t0, 1e-9))
        val_now = val_pairs and ((cfg.val_every and step % cfg.val_every == 0) or step == cfg.iterations)
        if val_now:
            v = validate(model, val_pairs, samples=cfg.val_samples, seed=cfg.seed)
            metrics.write(step, **v)
            last = {**last, **v}
            _keep_best(run_dir, model, step, v, cfg_json)
            say(f"iteration {step}: validation NLL {v['val_nll']:.3f} bits/px, tau-0 PSNR {v['val_psnr']:.2f} dB, "
                f"SSIM {v['val_ssim']:.3f}, tau-1 PSNR {v['val_psnr_tau1']:.2f} dB, block ratio {v['val_block']:.3f}, "
                f"non-finite samples at tau 1: {v['val_nonfinite']:.1%}")
        if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
            save(step, last)
    seconds = time.perf_counter() - t0
    recipe = {
        "trainer": "llflow", "config": cfg_json, "architecture": arch, "data": str(data), "pairs": len(pairs),
        "iterations": cfg.iterations, "world_size": d.world_size, "seconds": round(seconds, 1),
        "final_nll": loss_value, "skipped_steps": skipped, "resumed_from": ck.step if ck else None,
    }
    if d.is_main:
        save_trained_weights(model.state_dict(), output, family="llflow", recipe=recipe)
    barrier(d)
    return TrainResult(Path(output), run_dir, cfg.iterations, seconds, loss_value, len(pairs), ck.step if ck else None,
                       {"architecture": arch, "skipped": skipped, **last})


def _keep_best(run_dir: Path, model: LLFlow, step: int, v: Mapping[str, float], cfg_json: Mapping[str, Any]) -> None:
    """Keep the weights with the lowest validation NLL as ``run_dir/best.safetensors`` (+ ``best.json``).

    The held-out likelihood is the flow's own objective, and it measures the whole conditional
    distribution (what sampling at tau > 0 draws from), where the tau-0 PSNR measures only its mode.
    """
    if not math.isfinite(v.get("val_nll", math.nan)):
        return
    record = run_dir / "best.json"
    if record.is_file():
        try:
            if json.loads(record.read_text())["val_nll"] <= v["val_nll"]:
                return
        except (OSError, ValueError, KeyError):
            pass  # an unreadable record is replaced
    save_trained_weights(model.state_dict(), run_dir / "best.safetensors", family="llflow",
                         recipe={"trainer": "llflow", "config": cfg_json, "iteration": step, "validation": dict(v)})
    write_text_atomic(record, json.dumps({"iteration": step, **jsonable(dict(v))}, indent=2) + "\n")


def _rank_spread(model: nn.Module, d: Dist, dev: torch.device) -> float:
    """Largest difference between ranks of a weights checksum: 0 when DDP keeps them in sync."""
    import torch.distributed as dist

    with torch.no_grad():
        c = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
        t = torch.stack([c, -c]).to(dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0] + t[1])


def half_precision_copy(src: Path, dst: Path) -> str:
    """Write ``src``'s weights as float16 to ``dst`` (the embedded copies); returns the sha256 of ``dst``.

    The training recipe in the ``lle`` metadata is kept and marked; loading upcasts to float32
    (``load_state_strict`` casts to the model's dtype). Deterministic bytes for the same ``src``.
    """
    from safetensors import safe_open

    from ..weights import load_safetensors, save_safetensors, sha256_file

    with safe_open(str(src), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lle") or "{}")
    state = load_safetensors(Path(src))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v.half()).all()]
    if bad:
        raise ValueError(f"{src}: {bad[0]} does not fit in float16; keep the float32 file")
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sorted(state.items())}
    meta["dtype"] = "float16"
    meta["converted_from_sha256"] = sha256_file(Path(src))
    save_safetensors(half, Path(dst), metadata={"lle": json.dumps(meta, sort_keys=True)})
    return sha256_file(Path(dst))
