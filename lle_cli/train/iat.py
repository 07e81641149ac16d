"""Train IAT's architecture (models/iat.py) as lle's photo model: real dark scenes, natural scenes at
many exposures, and well-lit photos that must pass through unchanged.

Why this recipe: a model trained on LOL alone (the authors' ``iat.lol-v1``) brightens every input to
LOL's exposure, so it clips already-bright photos to white and carries LOL's colour casts; a
zero-reference model (Zero-DCE) keeps highlights but brightens the darkest scenes least. Each batch
here mixes three kinds of pairs, drawn per item with the probabilities of the config:

* **real** (``p_real``): a crop of a real low/normal-light pair (LOL-v1's training set);
* **synthetic** (``p_synth``): a crop of a well-exposed photo and the same crop made dark by
  ``lle_cli.degrade`` (exposure from very dark to mildly under-exposed, sensor noise, casts, tone
  curves, blur, JPEG), so that scenes and cameras LOL lacks are seen, at the darkness of real photos;
* **identity** (the rest): a well-exposed crop whose target is itself, which teaches IAT's per-image
  gamma and colour matrix to leave a photo alone when it needs nothing.

Loss per item: ``L1 + ssim_weight * (1 - SSIM) + highlight_weight * mean(relu(M local - 1))`` (SSIM
with an 11-px Gaussian window, sigma 1.5, on each channel, Wang et al. 2004), on crops with random
flips and transposes. The last term is why the photo model keeps highlights: IAT clamps its colour
mix ``M local`` to [0, 1] before the gamma, and a clamped pixel passes no gradient, so without it a
pixel pushed past white is never pulled back; light sources and bright skies were blown out. Adam with cosine decay
of the learning rate; checkpoints every ``checkpoint_every`` steps resume exactly (stateless
per-step randomness, ``train.common``). Validation (held-out real pairs and identity crops) is
logged to ``metrics.jsonl`` so the run can be judged while it runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..degrade import DegradeSpec, degrade, sample_params
from ..errors import InputError
from ..formats import list_image_files
from ..imageio import read_rgb8
from ..models.iat import IAT, IATConfig
from .common import (
    optimise,
    MetricsLog, RunOptions, TrainResult, checkpoint_path, jsonable, open_run, prune_checkpoints,
    resume_training, run_distributed, save_checkpoint, save_trained_weights, step_generator,
)

__all__ = ["IATTrainConfig", "train_iat", "ssim_loss", "PHOTO_DEGRADE"]

# Darker than LOL at one end (k = 0.004) to only mildly under-exposed at the other (k = 0.6): real dark
# photos (LIME, phones) sit in between, and a photo model must not assume every input is LOL-dark.
PHOTO_DEGRADE = DegradeSpec(exposure_range=(0.004, 0.6))


@dataclass(frozen=True)
class IATTrainConfig:
    """Hyper-parameters; the defaults trained the embedded ``iat.lle-photo`` model."""

    steps: int = 4000
    batch_size: int = 8
    crop: int = 96
    lr: float = 4e-4
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ssim_weight: float = 0.3
    highlight_weight: float = 1.0  # penalty on the colour mix beyond white, before IAT's clamp
    p_real: float = 0.5
    p_synth: float = 0.3  # the rest are identity pairs
    val_pairs: int = 8  # real pairs held out of training for validation (the last ones by name)
    val_every: int = 250
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    seed: int = 0
    degrade: DegradeSpec = field(default_factory=lambda: PHOTO_DEGRADE)
    model: IATConfig = field(default_factory=IATConfig)

    def __post_init__(self) -> None:
        if not (0 <= self.p_real and 0 <= self.p_synth and self.p_real + self.p_synth <= 1):
            raise InputError(f"p_real {self.p_real} and p_synth {self.p_synth} must be >= 0 and sum to at most 1")


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    return g


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - SSIM`` per item (N,), images in [0, 1], Gaussian window (valid positions only)."""
    c1, c2 = 0.01**2, 0.03**2
    g = _gaussian_window().to(x)
    ch = x.shape[1]
    wh = g.view(1, 1, -1, 1).expand(ch, 1, -1, 1)
    ww = g.view(1, 1, 1, -1).expand(ch, 1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, wh, groups=ch), ww, groups=ch)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return 1 - s.mean(dim=(1, 2, 3))


def _read(path: Path) -> np.ndarray:
    return read_rgb8(path)


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    low, high = Path(folder) / "low", Path(folder) / "high"
    if not low.is_dir() or not high.is_dir():
        raise InputError(f"{folder}: paired data needs low/ and high/ folders with the same file names")
    highs = {p.name: p for p in list_image_files(high)}
    pairs = [(p, highs[p.name]) for p in list_image_files(low) if p.name in highs]
    if not pairs:
        raise InputError(f"{folder}: no low/ image has a high/ image of the same name")
    return pairs


def _crop(img: np.ndarray, size: int, g: torch.Generator) -> tuple[int, int]:
    h, w = img.shape[:2]
    if h < size or w < size:
        raise InputError(f"an image of {w}x{h} is smaller than the crop {size}; lower --crop")
    y = int(torch.randint(0, h - size + 1, (1,), generator=g))
    x = int(torch.randint(0, w - size + 1, (1,), generator=g))
    return y, x


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _flip(t: torch.Tensor, code: int) -> torch.Tensor:
    if code & 1:
        t = t.flip(-1)
    if code & 2:
        t = t.flip(-2)
    if code & 4:
        t = t.transpose(-1, -2)
    return t


class _Data:
    """The training images in memory (uint8) and the draw of one item of step ``step``."""

    def __init__(self, real: Sequence[tuple[np.ndarray, np.ndarray]], photos: Sequence[np.ndarray], cfg: IATTrainConfig) -> None:
        self.real, self.photos, self.cfg = list(real), list(photos), cfg

    def item(self, g: torch.Generator, item_seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        cfg = self.cfg
        u = float(torch.rand(1, generator=g))
        kind = "real" if u < cfg.p_real else ("synth" if u < cfg.p_real + cfg.p_synth else "identity")
        if kind == "real" and not self.real:
            kind = "synth"
        if kind != "real" and not self.photos:
            kind = "real"
        code = int(torch.randint(0, 8, (1,), generator=g))
        if kind == "real":
            low, high = self.real[int(torch.randint(0, len(self.real), (1,), generator=g))]
            y, x = _crop(low, cfg.crop, g)
            s = slice(y, y + cfg.crop), slice(x, x + cfg.crop)
            return _flip(_to_tensor(low[s]), code), _flip(_to_tensor(high[s]), code), kind
        photo = self.photos[int(torch.randint(0, len(self.photos), (1,), generator=g))]
        y, x = _crop(photo, cfg.crop, g)
        clean = photo[y : y + cfg.crop, x : x + cfg.crop]
        target = _to_tensor(clean)
        if kind == "identity":
            return _flip(target, code), _flip(target, code), kind
        rng = np.random.default_rng(item_seed)
        dark = degrade(clean.astype(np.float64) / 255.0, sample_params(rng, cfg.degrade), rng)
        return _flip(_to_tensor(dark), code), _flip(target, code), kind


def _validate(model: IAT, val_real: Sequence[tuple[np.ndarray, np.ndarray]], val_photos: Sequence[np.ndarray], device: torch.device) -> dict[str, float]:
    """PSNR on the held-out real pairs (whole images) and on held-out photos passed through (identity)."""
    model.eval()
    out: dict[str, float] = {}
    with torch.no_grad():
        for name, items in (("val_real_psnr", [(lo, hi) for lo, hi in val_real]), ("val_identity_psnr", [(p, p) for p in val_photos])):
            psnrs = []
            for lo, hi in items:
                pred = model(_to_tensor(lo)[None].to(device)).clamp(0, 1)
                ref = _to_tensor(hi)[None].to(device)
                q = torch.round(pred * 255) / 255  # as a saved 8-bit file
                mse = float(F.mse_loss(q, ref))
                psnrs.append(10 * math.log10(1 / max(mse, 1e-12)))
            if psnrs:
                out[name] = round(float(np.mean(psnrs)), 4)
    model.train()
    return out


def train_iat(
    real: Path | None,
    photos: Sequence[Path],
    output: Path,
    cfg: IATTrainConfig | None = None,
    *,
    val_photos: Path | None = None,
    init_weights: Path | None = None,
    **run: Any,
) -> TrainResult:
    """Train from scratch (or resume) and write the final weights to ``output`` (safetensors).

    ``real``: a folder with ``low/`` and ``high/`` of real pairs (its last ``val_pairs`` names are
    held out); ``photos``: folders of well-exposed photos (synthetic and identity pairs);
    ``val_photos``: a folder of well-exposed photos never trained on, for the identity validation;
    ``init_weights``: start from these IAT weights (a fine-tuning stage) instead of a fresh model.
    ``run``: the run options every trainer takes (``train.common.RunOptions``).
    """
    cfg = cfg or IATTrainConfig()
    opts: RunOptions = run  # type: ignore[assignment]
    pairs = _pairs(Path(real)) if real is not None else []
    photo_files = [p for folder in photos for p in list_image_files(Path(folder))]
    if not pairs and not photo_files:
        raise InputError("no training data: give real pairs (--real) and/or photo folders (--photos)")
    n_val = min(cfg.val_pairs, max(0, len(pairs) - 1))
    train_pairs, val_pairs = (pairs[:-n_val], pairs[-n_val:]) if n_val else (pairs, [])
    val_files = list_image_files(Path(val_photos))[:8] if val_photos is not None else []

    def body(output: Path, run_dir: Path, resume: Path | None, d: Any, dev: torch.device, local_batch: int, progress: Any, say: Any) -> TrainResult:
        config = jsonable(asdict(cfg))
        ck = open_run(run_dir, resume, trainer="iat", label="IAT", config=config, total_steps=cfg.steps, ignore=("steps",))
        data = _Data([(_read(a), _read(b)) for a, b in train_pairs], [_read(p) for p in photo_files], cfg)
        val_real = [(_read(a), _read(b)) for a, b in val_pairs]
        val_ph = [_read(p) for p in val_files]
        say(f"IAT: {len(train_pairs)} real pairs ({len(val_pairs)} held out), {len(photo_files)} photos, {cfg.steps} steps")
        torch.manual_seed(cfg.seed)
        model = IAT(cfg.model)
        if init_weights is not None and ck is None:
            from ..models import load_state_strict
            from ..weights import load_upstream_checkpoint

            load_state_strict(model, load_upstream_checkpoint(Path(init_weights)), source=str(init_weights))
        model = model.to(dev).train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        start_step = resume_training(ck, "iat", model, opt, say)
        log = MetricsLog(run_dir / "metrics.jsonl", enabled=d.is_main, resume_step=start_step if ck else None)
        t0 = time.perf_counter()
        loss_value = math.nan
        window: list[float] = []
        for step in range(start_step + 1, cfg.steps + 1):
            lr = cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * (step - 1) / cfg.steps))
            for group in opt.param_groups:
                group["lr"] = lr
            g = step_generator(cfg.seed, step, d.rank)
            items = [data.item(g, int(torch.randint(0, 2**31 - 1, (1,), generator=g))) for _ in range(local_batch)]
            x = torch.stack([a for a, _, _ in items]).to(dev)
            y = torch.stack([b for _, b, _ in items]).to(dev)
            out = model.forward_all(x)
            pred = out.enhanced
            l1 = (pred - y).abs().mean(dim=(1, 2, 3))
            loss = (l1 + cfg.ssim_weight * ssim_loss(pred, y)).mean()
            if cfg.highlight_weight:
                local = model.network_input(x).mul(out.mul).add(out.add)
                mixed = torch.einsum("bkhw,bck->bchw", local, out.color)
                loss = loss + cfg.highlight_weight * torch.relu(mixed - 1).mean()
            loss_value = optimise(opt, loss, step, clip=model.parameters(), max_norm=cfg.grad_clip)
            window.append(loss_value)
            if progress is not None:
                progress(step, cfg.steps, loss_value)
            val = _validate(model, val_real, val_ph, dev) if (step % cfg.val_every == 0 or step == cfg.steps) else {}
            if step % 10 == 0 or val:
                log.write(step, loss=float(np.mean(window)), lr=lr, **val)
                window = []
            if val:
                say(f"step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in val.items()))
            if d.is_main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                save_checkpoint(checkpoint_path(run_dir / "checkpoints", step), step=step, modules={"iat": model},
                                optimizers={"iat": opt}, meta={"trainer": "iat", "config": config})
                prune_checkpoints(run_dir / "checkpoints", cfg.keep_checkpoints)
        seconds = time.perf_counter() - t0
        recipe = {
            "config": config, "init_weights": str(init_weights) if init_weights else None, "real": str(real) if real else None, "photos": [str(p) for p in photos],
            "real_pairs": len(train_pairs), "held_out_pairs": [a.name for a, _ in val_pairs], "photo_images": len(photo_files),
            "seconds": round(seconds, 1), "resumed_from": start_step or None,
        }
        if d.is_main:
            save_trained_weights(model.state_dict(), output, family="iat", recipe=recipe)
        return TrainResult(Path(output), run_dir, cfg.steps, seconds, loss_value, len(train_pairs) + len(photo_files),
                           resumed_from=start_step or None)

    return run_distributed(body, Path(output), cfg.batch_size, opts)
