"""Train RAVE (Gaintseva et al., ECCV 2024): the CLIP-LIT illumination UNet guided by a residual vector.

Recipe (paper section 3.3 and supplement, with the constants of the authors' ``train_rave.py``):

1. CLIP ViT-B/32 embeddings of the well-lit and backlit training images give ``v_residual`` (Eq. 10)
   and ``v_well-lit`` (Eq. 13); ``shift_tokens = n`` applies Eq. 15-16 (see ``lle_cli.residual``).
2. The UNet (conv weights drawn from N(0, 0.02), outer convolutions zero-padded as the authors trained;
   inference reflect-pads; the last bias set to 1 so that training starts from the identity) first learns to reconstruct its input: ``warmup_steps`` steps of the
   identity loss alone (Eq. 4 on RN101 CLIP feature maps, all five layers weighted 1).
3. Then ``L = omega * 320 * L_residual + 0.9 * 25 * L_identity`` (Eq. 11-12, omega = 6, identity
   layers weighted (1, 1, 1, 1, 0.5)); the enhanced image is ``clamp(x / (L + 1e-9), 0, 1)``.

Adam (lr 2e-5, betas (0.9, 0.99), weight decay 1e-3), batch 8, 512x512 squash-resized images with
flips, transpose, zoom and rotation. The authors' re-initialisation of a UNet whose warm-up PSNR stays
under 8 dB and their loss-dependent stage lengths are not reproduced: the run is a plain step count.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..clip import ClipModel, ClipSpec, list_images, load_clip
from ..errors import InputError, UsageError
from ..losses_clip import identity_loss, residual_loss
from ..models.illumination_unet import IlluminationUNet, IlluminationUNetConfig
from ..residual import ResidualVector, residual_from_folders, save_residual
from .common import (
    optimise,
    Dist, MetricsLog, RunOptions, TrainResult, all_reduce_mean, augment_batch, barrier, batch_indices,
    checkpoint_path, jsonable, load_images_resized, open_run, prune_checkpoints, resume_training, run_distributed,
    save_checkpoint, save_trained_weights, step_generator, wrap_ddp,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["GuidedUNetTrainConfig", "RaveLossWeights", "RaveTrainConfig", "TrainResult", "train_rave", "TrainingEnhancer", "new_unet"]

# settings that may change between a run and its resumption
RESUMABLE = frozenset({"steps", "checkpoint_every", "keep_checkpoints", "log_every", "embed_batch_size"})


@dataclass(frozen=True)
class RaveLossWeights:
    omega: float = 6.0  # Eq. 11
    residual_scale: float = 320.0  # the authors' 16 * 20 in front of Eq. 12
    identity_scale: float = 25.0  # the authors' 25 in front of Eq. 4
    identity_weight: float = 0.9  # weight of the identity term once guidance is on
    identity_layers: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 0.5)
    warmup_layers: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)


@dataclass(frozen=True)
class GuidedUNetTrainConfig:
    """What the two CLIP-guided UNet trainers (RAVE, CLIP-LIT-Latent) share, with the papers' common
    defaults (both supplements train the same UNet at the same resolution and learning rate)."""

    batch_size: int = 8
    size: int = 512
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1e-3
    paired: bool = False
    augment: bool = True
    outer_padding: str = "zeros"
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 20
    embed_batch_size: int = 32
    clip: ClipSpec = field(default_factory=ClipSpec)
    identity_clip: ClipSpec = field(default_factory=lambda: ClipSpec(model="RN101", pretrained="openai"))


@dataclass(frozen=True)
class RaveTrainConfig(GuidedUNetTrainConfig):
    """Hyper-parameters; the defaults are the paper's (supplement section 1)."""

    steps: int = 10_000
    warmup_steps: int = 1_000
    shift_tokens: int = 0
    losses: RaveLossWeights = field(default_factory=RaveLossWeights)


# ---- pieces shared with CLIP-LIT-Latent ---------------------------------------------------------
def new_unet(outer_padding: str, seed: int) -> IlluminationUNet:
    """The CLIP-LIT UNet with the authors' initialisation (conv weights from N(0, 0.02))."""
    if outer_padding not in ("zeros", "reflect"):
        raise UsageError(f"--outer-padding {outer_padding!r}: expected zeros or reflect")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = IlluminationUNet(IlluminationUNetConfig(outer_padding=outer_padding))  # type: ignore[arg-type]
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.weight, 0.0, 0.02)
        # Start near L = 1 (enhanced ~ input). With the default bias, L starts near 0, x / L clamps to 1
        # almost everywhere and the clamp passes no gradient: the authors detect that (PSNR < 8 dB) and
        # re-initialise with another seed; starting from the identity avoids the dead start altogether.
        torch.nn.init.constant_(net.cond_add1.bias, 1.0)
    return net


class TrainingEnhancer(torch.nn.Module):
    """``clamp(x / (L + 1e-9), 0, 1)`` as the training scripts (the epsilon keeps gradients finite).

    A module, so that DDP sees the forward pass and synchronises the UNet's gradients.
    """

    def __init__(self, unet: IlluminationUNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x / (self.unet.illumination(x) + 1e-9), 0.0, 1.0)


def identity_term(idclip: ClipModel, enhanced: torch.Tensor, x: torch.Tensor, layers: tuple[float, ...]) -> torch.Tensor:
    fe = idclip.feature_maps(enhanced)
    with torch.no_grad():
        fx = idclip.feature_maps(x)
    if len(layers) != len(fe):
        raise UsageError(
            f"the identity CLIP gives {len(fe)} feature maps but {len(layers)} layer weights are set; "
            "use a ResNet CLIP (RN101, as the papers) for the identity loss"
        )
    return identity_loss(fe, fx, layers)


def main_first(d: Dist, fn):
    """Run ``fn`` on rank 0 first (it fills the caches), then on the others (they read them)."""
    if d.is_main:
        out = fn()
        barrier(d)
        return out
    barrier(d)
    return fn()


def check_pairs(backlit: list[Path], welllit: list[Path]) -> None:
    """``--paired``: every backlit image needs a well-lit counterpart with the same file stem."""
    stems = {p.stem for p in welllit}
    missing = [p for p in backlit if p.stem not in stems]
    if missing:
        raise InputError(
            f"{missing[0]}: --paired but no well-lit image named {missing[0].stem}.* "
            f"({len(missing)} of {len(backlit)} backlit images have none); drop --paired for unpaired data"
        )


# ---- the trainer --------------------------------------------------------------------------------
def train_rave(
    backlit: Path, welllit: Path, output: Path, cfg: RaveTrainConfig | None = None, **run: Unpack[RunOptions]
) -> TrainResult:
    """Train a RAVE UNet on ``backlit`` images guided by ``welllit`` ones; write safetensors to ``output``.

    ``run``: ``run_dir``, ``resume``, ``device``, ``progress(step, total, loss)``, ``log`` (``RunOptions``).
    """
    cfg = cfg or RaveTrainConfig()
    if cfg.batch_size < 1 or cfg.steps < 1 or cfg.size < 16:
        raise UsageError("--steps and --batch-size must be positive and --size at least 16")
    return run_distributed(lambda *a: _train(Path(backlit), Path(welllit), cfg, *a), output, cfg.batch_size, run)


def _train(backlit, welllit, cfg, output, run_dir, resume, d, dev, local_batch, progress, say) -> TrainResult:
    back_files = list_images(backlit)
    well_files = list_images(welllit)
    if cfg.paired:
        check_pairs(back_files, well_files)
    cfg_json = jsonable(asdict(cfg))

    ck = open_run(run_dir, resume, trainer="rave", label="RAVE", config=cfg_json, total_steps=cfg.steps, ignore=RESUMABLE)

    say(f"loading CLIP {cfg.clip.describe()} and identity CLIP {cfg.identity_clip.describe()}")
    clip = load_clip(cfg.clip, device=dev)
    idclip = load_clip(cfg.identity_clip, device=dev)

    if ck is not None and "residual" in ck.tensors:
        rv = ResidualVector(ck.tensors["residual"].float(), ck.tensors["welllit"].float(), None, dict(ck.meta.get("residual", {})))
    else:
        say(f"computing the residual vector from {len(well_files)} well-lit and {len(back_files)} backlit images")
        rv = main_first(d, lambda: residual_from_folders(clip, backlit, welllit, shift_tokens=cfg.shift_tokens,
                                                    batch_size=cfg.embed_batch_size))
    if d.is_main:
        save_residual(rv, run_dir / "residual.safetensors", clip_key=clip.key)
    v_res = rv.residual.to(dev)
    thr = rv.threshold

    images = load_images_resized(back_files, cfg.size)
    unet = new_unet(cfg.outer_padding, cfg.seed).to(dev)
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    start = resume_training(ck, "unet", unet, opt, say)
    model = wrap_ddp(TrainingEnhancer(unet), d, dev)
    model.train()
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=d.is_main, resume_step=start if ck else None)
    if d.is_main:
        (run_dir / "config.json").write_text(json.dumps({"trainer": "rave", "config": cfg_json}, indent=2) + "\n")
    w = cfg.losses
    t0 = time.perf_counter()
    loss_value = math.nan
    for step in range(start + 1, cfg.steps + 1):
        g = step_generator(cfg.seed, step, d.rank)
        idx = batch_indices(len(images), step, local_batch, cfg.seed, d)
        x = images[idx].float().div_(255.0)
        if cfg.augment:
            x = augment_batch(x, g)
        x = x.to(dev)
        enhanced = model(x)
        if step <= cfg.warmup_steps:
            ident = w.identity_scale * identity_term(idclip, enhanced, x, w.warmup_layers)
            res = None
            loss = ident
        else:
            ident = w.identity_scale * identity_term(idclip, enhanced, x, w.identity_layers)
            res = w.residual_scale * residual_loss(clip.encode_images(enhanced), v_res, thr)
            loss = w.omega * res + w.identity_weight * ident
        loss_value = optimise(opt, loss, step)
        if step % cfg.log_every == 0 or step == cfg.steps or step == start + 1:
            loss_value = all_reduce_mean(loss_value, d, dev)
            metrics.write(step, loss=loss_value, identity=all_reduce_mean(float(ident.detach()), d, dev),
                          residual=None if res is None else all_reduce_mean(float(res.detach()), d, dev),
                          stage="warmup" if res is None else "guided", lr=opt.param_groups[0]["lr"])
        if progress:
            progress(step, cfg.steps, loss_value)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            if d.is_main:
                save_checkpoint(
                    checkpoint_path(run_dir / "checkpoints", step), step=step, modules={"unet": unet}, optimizers={"unet": opt},
                    tensors={"residual": rv.residual, "welllit": rv.welllit},
                    meta={"trainer": "rave", "config": cfg_json, "residual": rv.info},
                )
                prune_checkpoints(run_dir / "checkpoints", cfg.keep_checkpoints)
            barrier(d)
    seconds = time.perf_counter() - t0
    recipe = {
        "trainer": "rave", "config": cfg_json, "backlit": str(backlit), "welllit": str(welllit),
        "images": len(back_files), "welllit_images": len(well_files), "clip": clip.key, "identity_clip": idclip.key,
        "residual": rv.info, "steps": cfg.steps, "seconds": round(seconds, 1),
    }
    if d.is_main:
        save_trained_weights(unet.state_dict(), output, family="illumination_unet", recipe=recipe)
    barrier(d)
    return TrainResult(output, run_dir, cfg.steps, seconds, loss_value, len(back_files),
                       ck.step if ck else None, {"residual": rv.info, "threshold": thr})
