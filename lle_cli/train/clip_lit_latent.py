"""Train CLIP-LIT-Latent (RAVE paper, section 3.2): CLIP-LIT with the prompt pair learnt directly as two
vectors ``E_n, E_p`` in CLIP's embedding space.

Schedule, one global step counter across stages:

1. ``init``: ``E = (E_n, E_p)`` drawn from N(0, 1) and trained with the cross-entropy of Eq. 7 on the
   embeddings of the backlit (label 0) and well-lit (label 1) images, balanced batches.
2. ``warmup``: the UNet learns to reconstruct its input (identity loss only, as in RAVE).
3. ``rounds`` times: ``unet`` stage, ``L = 320 * L_clip (Eq. 8) + 0.9 * 25 * L_identity``; then, between
   two UNet stages, a ``latent`` stage refining ``E`` with the margin ranking loss (Eq. 5, 9; weight 200,
   margins m0 = 0.9, m1 = m2 = 0.2 of the supplement) on the backlit, well-lit and the last one or two
   enhancement results (the backlit training images passed through the UNet after each UNet stage).

Learning rates: 2e-5 for the UNet (supplement) and 5e-4 for the latent pair (the authors'
``clip_lit_latent.yaml``; the supplement's 5e-6 is CLIP-LIT's prompt rate and barely moves unit-scale
vectors). All embeddings are those of the training-size images (squash-resized, as the authors'
loaders), computed once per run; the latent stages do not augment (the authors re-embed augmented
copies every step). The authors' loss-dependent extension of stages is not reproduced.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..clip import ClipModel, list_images, load_clip
from ..errors import UsageError
from ..losses_clip import (
    LOGIT_SCALE,
    latent_clip_loss,
    latent_init_loss,
    latent_score,
    margin_ranking_loss,
)
from ..weights import save_safetensors
from .common import (
    Dist, MetricsLog, RunOptions, all_reduce_mean, augment_batch, barrier, batch_indices, broadcast_,
    checkpoint_path, jsonable, load_images_resized, open_run, prune_checkpoints, resume_training, run_distributed,
    save_checkpoint, save_trained_weights, step_generator, wrap_ddp,
)
from .rave import (
    RESUMABLE,
    GuidedUNetTrainConfig,
    TrainingEnhancer,
    TrainResult,
    check_pairs,
    identity_term,
    new_unet,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ClipLitLatentLossWeights", "ClipLitLatentTrainConfig", "train_clip_lit_latent", "stage_schedule"]


@dataclass(frozen=True)
class ClipLitLatentLossWeights:
    clip_scale: float = 320.0  # the authors' 16 * 20 in front of Eq. 8
    identity_scale: float = 25.0
    omega: float = 0.9  # Eq. 2's weight of the identity loss (supplement)
    identity_layers: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 0.5)
    warmup_layers: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    margin_scale: float = 200.0  # the authors' weight of Eq. 5
    margins: tuple[float, float, float] = (0.9, 0.2, 0.2)  # m0, m1, m2 (supplement)
    logit_scale: float = LOGIT_SCALE


@dataclass(frozen=True)
class ClipLitLatentTrainConfig(GuidedUNetTrainConfig):
    """Defaults: the supplement's settings; 13 rounds make the paper's ~50k iterations."""

    init_steps: int = 8_000
    warmup_steps: int = 1_000
    rounds: int = 13
    unet_steps: int = 2_100
    latent_steps: int = 1_000
    latent_batch_size: int = 16
    latent_lr: float = 5e-4
    losses: ClipLitLatentLossWeights = field(default_factory=ClipLitLatentLossWeights)

    @property
    def total_steps(self) -> int:
        return sum(n for _, _, n in stage_schedule(self))


def stage_schedule(cfg: ClipLitLatentTrainConfig) -> list[tuple[str, int, int]]:
    """``(stage, round, length)`` in order; zero-length stages are left out."""
    out = [("init", 0, cfg.init_steps), ("warmup", 0, cfg.warmup_steps)]
    for r in range(1, cfg.rounds + 1):
        out.append(("unet", r, cfg.unet_steps))
        if r < cfg.rounds:
            out.append(("latent", r, cfg.latent_steps))
    return [s for s in out if s[2] > 0]


def _stage_at(schedule: list[tuple[str, int, int]], step: int) -> tuple[str, int, int, bool]:
    """Stage, round, step within the stage (1-based) and whether it is the stage's last step."""
    end = 0
    for name, rnd, n in schedule:
        if step <= end + n:
            return name, rnd, step - end, step == end + n
        end += n
    raise ValueError(step)


@torch.no_grad()
def _embed(clip: ClipModel, images: torch.Tensor, dev: torch.device, bs: int, unet: torch.nn.Module | None = None) -> torch.Tensor:
    """CLIP embeddings (N, D) of uint8 images, optionally after enhancement by ``unet``."""
    out = []
    for s in range(0, len(images), bs):
        x = images[s : s + bs].float().div(255.0).to(dev)
        if unet is not None:
            x = torch.clamp(x / (unet.illumination(x) + 1e-9), 0.0, 1.0)
        out.append(clip.encode_images(x).float())
    return torch.cat(out)


def train_clip_lit_latent(
    backlit: Path, welllit: Path, output: Path, cfg: ClipLitLatentTrainConfig | None = None, **run: Unpack[RunOptions]
) -> TrainResult:
    """Train the latent pair and the UNet on ``backlit``/``welllit`` folders; write the UNet to ``output``.

    ``run``: ``run_dir``, ``resume``, ``device``, ``progress(step, total, loss)``, ``log`` (``RunOptions``).
    """
    cfg = cfg or ClipLitLatentTrainConfig()
    if cfg.rounds < 1 or cfg.unet_steps < 1 or cfg.batch_size < 1 or cfg.latent_batch_size < 2 or cfg.size < 16:
        raise UsageError("--rounds, --unet-steps and --batch-size must be positive, --latent-batch-size at least 2, --size at least 16")
    return run_distributed(lambda *a: _train(Path(backlit), Path(welllit), cfg, *a), output, cfg.batch_size, run)


def _train(backlit, welllit, cfg, output, run_dir, resume, d, dev, local_batch, progress, say) -> TrainResult:
    back_files, well_files = list_images(backlit), list_images(welllit)
    if cfg.paired:
        check_pairs(back_files, well_files)
    cfg_json = jsonable(asdict(cfg))
    schedule = stage_schedule(cfg)
    total = sum(n for _, _, n in schedule)

    ck = open_run(run_dir, resume, trainer="clip-lit-latent", label="CLIP-LIT-Latent", config=cfg_json, total_steps=total,
                  ignore=RESUMABLE | {"rounds"}, extend_hint="add --rounds to train on")  # more rounds extend the schedule

    say(f"loading CLIP {cfg.clip.describe()} and identity CLIP {cfg.identity_clip.describe()}")
    clip = load_clip(cfg.clip, device=dev)
    idclip = load_clip(cfg.identity_clip, device=dev)
    back = load_images_resized(back_files, cfg.size)
    well = load_images_resized(well_files, cfg.size)
    say(f"embedding {len(back)} backlit and {len(well)} well-lit images")
    e_back = _embed(clip, back, dev, cfg.embed_batch_size)
    e_well = _embed(clip, well, dev, cfg.embed_batch_size)

    unet = new_unet(cfg.outer_padding, cfg.seed).to(dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        latents = torch.nn.Parameter(torch.randn(2, e_back.shape[1]).to(dev))  # rows: E_n, E_p
    opt_u = torch.optim.Adam(unet.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_l = torch.optim.Adam([latents], lr=cfg.latent_lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    enhanced: list[torch.Tensor] = []  # embeddings of the enhanced backlit set after the last UNet stages
    start = resume_training(ck, "unet", unet, opt_u, say)
    if ck is not None:  # the latent pair and the last stages' embeddings travel with the UNet
        ck.restore_optimizer("latents", opt_l)
        with torch.no_grad():
            latents.copy_(ck.tensors["latents"].to(dev))
        enhanced = [ck.tensors[f"enhanced{i}"].to(dev) for i in range(2) if f"enhanced{i}" in ck.tensors]
    model = wrap_ddp(TrainingEnhancer(unet), d, dev)
    model.train()
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=d.is_main, resume_step=start if ck else None)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps({"trainer": "clip-lit-latent", "config": cfg_json}, indent=2) + "\n")
    w = cfg.losses
    t0 = time.perf_counter()
    loss_value = math.nan
    single = Dist()  # latent stages run identically on every rank
    for step in range(start + 1, total + 1):
        stage, rnd, _k, last = _stage_at(schedule, step)
        parts: dict[str, float | None] = {}
        if stage in ("init", "latent"):
            if stage == "init":
                half = cfg.latent_batch_size // 2
                ib = batch_indices(len(e_back), step, half, cfg.seed, single, stream=1)
                iw = batch_indices(len(e_well), step, cfg.latent_batch_size - half, cfg.seed, single, stream=2)
                emb = torch.cat([e_back[ib], e_well[iw]])
                labels = torch.cat([torch.zeros(len(ib)), torch.ones(len(iw))]).long().to(dev)
                loss = latent_init_loss(emb, latents, labels, w.logit_scale)
            else:
                ib = batch_indices(len(e_back), step, cfg.latent_batch_size, cfg.seed, single, stream=3)
                iw = batch_indices(len(e_well), step, cfg.latent_batch_size, cfg.seed, single, stream=4)
                s = [latent_score(e[ib], latents, w.logit_scale) for e in enhanced]
                loss = w.margin_scale * margin_ranking_loss(
                    latent_score(e_back[ib], latents, w.logit_scale), latent_score(e_well[iw], latents, w.logit_scale), s, w.margins)
            opt_l.zero_grad(set_to_none=True)
            loss.backward()
            opt_l.step()
            loss_value = float(loss.detach())
            if last:
                with torch.no_grad():
                    broadcast_(latents.data, d)
        else:
            g = step_generator(cfg.seed, step, d.rank)
            idx = batch_indices(len(back), step, local_batch, cfg.seed, d)
            x = back[idx].float().div_(255.0)
            if cfg.augment:
                x = augment_batch(x, g)
            x = x.to(dev)
            out = model(x)
            if stage == "warmup":
                loss = w.identity_scale * identity_term(idclip, out, x, w.warmup_layers)
                parts["identity"] = float(loss.detach())
            else:
                ident = w.identity_scale * identity_term(idclip, out, x, w.identity_layers)
                lclip = w.clip_scale * latent_clip_loss(clip.encode_images(out), latents.detach(), w.logit_scale)
                loss = lclip + w.omega * ident
                parts = {"identity": float(ident.detach()), "clip": float(lclip.detach())}
            opt_u.zero_grad(set_to_none=True)
            loss.backward()
            opt_u.step()
            loss_value = all_reduce_mean(float(loss.detach()), d, dev)
            if stage == "unet" and last:  # the enhancement result I_t of this round, for Eq. 5
                unet.eval()
                enhanced = (enhanced + [_embed(clip, back, dev, cfg.embed_batch_size, unet)])[-2:]
                unet.train()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training diverged at step {step} ({stage} stage, loss {loss_value}); lower the learning rate")
        if step % cfg.log_every == 0 or last or step == start + 1:
            metrics.write(step, stage=stage, round=rnd, loss=loss_value, **parts)
        if progress:
            progress(step, total, loss_value)
        if step % cfg.checkpoint_every == 0 or step == total:
            if d.is_main:
                tensors = {"latents": latents.detach()}
                tensors.update({f"enhanced{i}": e for i, e in enumerate(enhanced)})
                save_checkpoint(checkpoint_path(run_dir / "checkpoints", step), step=step, modules={"unet": unet},
                                optimizers={"unet": opt_u, "latents": opt_l}, tensors=tensors,
                                meta={"trainer": "clip-lit-latent", "config": cfg_json})
                prune_checkpoints(run_dir / "checkpoints", cfg.keep_checkpoints)
            barrier(d)
    seconds = time.perf_counter() - t0
    recipe = {
        "trainer": "clip-lit-latent", "config": cfg_json, "backlit": str(backlit), "welllit": str(welllit),
        "images": len(back_files), "welllit_images": len(well_files), "clip": clip.key, "identity_clip": idclip.key,
        "steps": total, "seconds": round(seconds, 1),
    }
    if d.is_main:
        save_trained_weights(unet.state_dict(), output, family="illumination_unet", recipe=recipe)
        save_safetensors({"latents": latents.detach().cpu().contiguous()}, run_dir / "latents.safetensors",
                         metadata={"lle": json.dumps({"kind": "clip_lit_latent_pair", "rows": ["E_n", "E_p"], "clip": clip.key})})
    barrier(d)
    return TrainResult(output, run_dir, total, seconds, loss_value, len(back_files), ck.step if ck else None,
                       {"latents": latents.detach().cpu()})
