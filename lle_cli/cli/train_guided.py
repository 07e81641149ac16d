"""``lle train rave | clip-lit-latent | scl-lle``: the CLIP-guided and contrastive trainers.

Thin commands: they validate flags, build the trainer's config and call the library. Heavy imports
(open_clip, torchvision) happen inside the library only when a command runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import OutputExistsError, UsageError
from ..api import (
    SEGMENTERS, ClipLitLatentLossWeights, ClipLitLatentTrainConfig, ClipSpec, RaveLossWeights, RaveTrainConfig, SclTrainConfig,
    SegSpec, VggSpec, select_device,
)
from ._common import (
    DeviceOpt, QuietOpt, err_console, note, show_progress, with_options,
)

_R = RaveTrainConfig()
_L = ClipLitLatentTrainConfig()
_S = SclTrainConfig()

OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Where to write the trained .safetensors weights.")]
BacklitOpt = Annotated[Path, typer.Option("--backlit", help="Folder of backlit (or low-light) training images.")]
WelllitOpt = Annotated[Path, typer.Option("--welllit", help="Folder of well-lit images (the target look).")]
PairedOpt = Annotated[bool, typer.Option("--paired", help="The well-lit folder holds a retouched copy of each backlit image (same file stem).")]
ClipModelOpt = Annotated[str, typer.Option("--clip-model", help="Guidance CLIP: an open_clip architecture or an open_clip JSON config.")]
ClipPretrainedOpt = Annotated[str, typer.Option("--clip-pretrained", help="open_clip pretrained tag of the guidance CLIP ('random': untrained, for smoke tests).")]
ClipWeightsOpt = Annotated[Optional[Path], typer.Option("--clip-weights", help="Local file with those CLIP weights (offline use).")]
IdModelOpt = Annotated[str, typer.Option("--identity-model", help="CLIP whose feature maps give the identity loss (a ResNet CLIP).")]
IdPretrainedOpt = Annotated[str, typer.Option("--identity-pretrained", help="open_clip pretrained tag of the identity CLIP.")]
IdWeightsOpt = Annotated[Optional[Path], typer.Option("--identity-weights", help="Local file with the identity CLIP's weights.")]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Checkpoints, metrics.jsonl and config (default: OUTPUT's name + _run).")]
ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue from a checkpoint file or the newest one in a run directory.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")]
CheckpointEveryOpt = Annotated[int, typer.Option("--checkpoint-every", min=1, help="Write a checkpoint every N steps.")]
LogEveryOpt = Annotated[int, typer.Option("--log-every", min=1, help="Write metrics.jsonl every N steps.")]


# ---- option groups: options every trainer command takes, written once (see _common.with_options) ---
@dataclass(frozen=True)
class RunArgs:
    """Where a training run keeps its state and how it reports: the ``run`` option group."""

    run_dir: Optional[Path]
    resume: Optional[Path]
    checkpoint_every: int
    log_every: int
    device: str
    overwrite: bool
    quiet: bool


def _run_options(defaults) -> Callable[..., RunArgs]:
    """The ``run`` group, with the checkpoint and log intervals of the trainer config ``defaults``."""

    def run(
        run_dir: RunDirOpt = None,
        resume: ResumeOpt = None,
        checkpoint_every: CheckpointEveryOpt = defaults.checkpoint_every,
        log_every: LogEveryOpt = defaults.log_every,
        device: DeviceOpt = "auto",
        overwrite: OverwriteOpt = False,
        quiet: QuietOpt = False,
    ) -> RunArgs:
        return RunArgs(run_dir, resume, checkpoint_every, log_every, device, overwrite, quiet)

    return run


def _clip_options(defaults) -> Callable[..., dict[str, ClipSpec]]:
    """The ``clips`` group: the guidance and identity CLIPs, as the config's ``clip``/``identity_clip``."""

    def clips(
        clip_model: ClipModelOpt = defaults.clip.model,
        clip_pretrained: ClipPretrainedOpt = "openai",
        clip_weights: ClipWeightsOpt = None,
        identity_model: IdModelOpt = defaults.identity_clip.model,
        identity_pretrained: IdPretrainedOpt = "openai",
        identity_weights: IdWeightsOpt = None,
    ) -> dict[str, ClipSpec]:
        return {"clip": _clip_spec(clip_model, clip_pretrained, clip_weights),
                "identity_clip": _clip_spec(identity_model, identity_pretrained, identity_weights)}

    return clips


def _clip_spec(model: str, pretrained: str, weights: Optional[Path]) -> ClipSpec:
    return ClipSpec(model=model, pretrained=pretrained, weights=str(weights) if weights else None)


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: already exists; pass --overwrite to replace it")
    if output.suffix != ".safetensors":
        raise UsageError(f"{output}: the output must be a .safetensors file")


@contextmanager
def _bar(quiet: bool):
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=not show_progress(quiet, False)) as progress:
        task = progress.add_task("train", total=None, loss=float("nan"))
        yield lambda s, n, loss: progress.update(task, completed=s, total=n, loss=loss)


def _log(quiet: bool):
    return (lambda _m: None) if quiet else (lambda m: note(f"{m}"))


def _train(train: Callable[..., object], inputs: tuple[Path, ...], output: Path, cfg: object, run: RunArgs, **extra: object) -> int:
    """What every trainer command does with its config: refuse to overwrite, train with a bar, report."""
    _check_output(output, run.overwrite)
    with _bar(run.quiet) as progress:
        result = train(*inputs, output, cfg, run_dir=run.run_dir, resume=run.resume, device=select_device(run.device),
                       progress=progress, log=_log(run.quiet), **extra)
    _summary(result, run.quiet)
    return 0


def _summary(result, quiet: bool) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    if not quiet:
        resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
        err_console.print(f"trained {result.steps} steps{resumed} on {result.images} images in {result.seconds:.0f} s; "
                          f"final loss {result.final_loss:.4f}; run directory {result.run_dir}")
    print(result.output)


@with_options(_clip_options(_R), _run_options(_R))
def rave(
    backlit: BacklitOpt,
    welllit: WelllitOpt,
    output: OutputOpt,
    paired: PairedOpt = False,
    shift_tokens: Annotated[int, typer.Option("--shift-tokens", min=0, help="RAVE shifted (Eq. 15-16): remove the direction of the N most/least similar tokens.")] = 0,
    steps: Annotated[int, typer.Option(min=1, help="Total optimiser steps (warm-up included).")] = _R.steps,
    warmup_steps: Annotated[int, typer.Option(min=0, help="Reconstruction-only steps first.")] = _R.warmup_steps,
    batch_size: Annotated[int, typer.Option(min=1)] = _R.batch_size,
    size: Annotated[int, typer.Option(min=16, help="Training images are resized to SIZE x SIZE.")] = _R.size,
    lr: Annotated[float, typer.Option()] = _R.lr,
    omega: Annotated[float, typer.Option(help="Weight of the residual loss (Eq. 11).")] = _R.losses.omega,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Flips, transpose, zoom, rotation.")] = True,
    seed: Annotated[int, typer.Option()] = _R.seed,
    *,
    clips: dict[str, ClipSpec],
    run: RunArgs,
) -> int:
    """Train a RAVE illumination UNet guided by the residual vector of your backlit/well-lit images."""
    from ..api import train_rave

    cfg = RaveTrainConfig(
        steps=steps, warmup_steps=warmup_steps, batch_size=batch_size, size=size, lr=lr, shift_tokens=shift_tokens,
        paired=paired, augment=augment, seed=seed, checkpoint_every=run.checkpoint_every, log_every=run.log_every,
        losses=RaveLossWeights(omega=omega), **clips,
    )
    return _train(train_rave, (backlit, welllit), output, cfg, run)


def _margins(text: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise UsageError(f"--margins {text!r}: expected three numbers m0,m1,m2 (e.g. 0.9,0.2,0.2)")
    return vals  # type: ignore[return-value]


@with_options(_clip_options(_L), _run_options(_L))
def clip_lit_latent(
    backlit: BacklitOpt,
    welllit: WelllitOpt,
    output: OutputOpt,
    paired: PairedOpt = False,
    init_steps: Annotated[int, typer.Option(min=0, help="Initial training of the latent pair (Eq. 7).")] = _L.init_steps,
    warmup_steps: Annotated[int, typer.Option(min=0, help="Reconstruction-only UNet steps.")] = _L.warmup_steps,
    rounds: Annotated[int, typer.Option(min=1, help="UNet stages; a latent refinement stage runs between two.")] = _L.rounds,
    unet_steps: Annotated[int, typer.Option(min=1, help="Steps of each UNet stage.")] = _L.unet_steps,
    latent_steps: Annotated[int, typer.Option(min=0, help="Steps of each latent refinement stage (Eq. 5).")] = _L.latent_steps,
    batch_size: Annotated[int, typer.Option(min=1)] = _L.batch_size,
    latent_batch_size: Annotated[int, typer.Option(min=2)] = _L.latent_batch_size,
    size: Annotated[int, typer.Option(min=16)] = _L.size,
    lr: Annotated[float, typer.Option(help="UNet learning rate.")] = _L.lr,
    latent_lr: Annotated[float, typer.Option(help="Learning rate of the latent pair.")] = _L.latent_lr,
    margins: Annotated[str, typer.Option(help="m0,m1,m2 of Eq. 5.")] = ",".join(str(m) for m in _L.losses.margins),
    augment: Annotated[bool, typer.Option("--augment/--no-augment")] = True,
    seed: Annotated[int, typer.Option()] = _L.seed,
    *,
    clips: dict[str, ClipSpec],
    run: RunArgs,
) -> int:
    """Train the CLIP-LIT-Latent baseline: a latent prompt pair in CLIP space and the UNet, in rounds."""
    from ..api import train_clip_lit_latent

    cfg = ClipLitLatentTrainConfig(
        init_steps=init_steps, warmup_steps=warmup_steps, rounds=rounds, unet_steps=unet_steps, latent_steps=latent_steps,
        batch_size=batch_size, latent_batch_size=latent_batch_size, size=size, lr=lr, latent_lr=latent_lr, paired=paired,
        augment=augment, seed=seed, checkpoint_every=run.checkpoint_every, log_every=run.log_every,
        losses=ClipLitLatentLossWeights(margins=_margins(margins)), **clips,
    )
    return _train(train_clip_lit_latent, (backlit, welllit), output, cfg, run)


@with_options(_run_options(_S))
def scl_lle(
    images: Annotated[Path, typer.Option("--images", help="Folder of low-light training images (e.g. Cityscapes leftImg8bit).")],
    positives: Annotated[Path, typer.Option("--positives", help="Folder of normal-light images (positive samples).")],
    negatives: Annotated[Path, typer.Option("--negatives", help="Folder of over/under-exposed images (negative samples).")],
    output: OutputOpt,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Folder of Cityscapes label maps (*_gtFine_labelIds.png); without it the semantic term is off.")] = None,
    label_format: Annotated[str, typer.Option(help="auto (by file name, then values), labelIds or trainIds.")] = _S.label_format,
    steps: Annotated[int, typer.Option(min=1)] = _S.steps,
    batch_size: Annotated[int, typer.Option(min=1)] = _S.batch_size,
    crop: Annotated[int, typer.Option(min=16, help="Random crop size of the training images.")] = _S.crop,
    lr: Annotated[float, typer.Option()] = _S.lr,
    seed: Annotated[int, typer.Option()] = _S.seed,
    vgg_weights: Annotated[Optional[str], typer.Option("--vgg-weights", help="VGG-16 weights file (default: torchvision's cache; 'random' for smoke tests).")] = None,
    seg_model: Annotated[str, typer.Option("--seg-model", help=f"torchvision segmenter: {', '.join(SEGMENTERS)}.")] = _S.segmenter.arch,
    seg_weights: Annotated[Optional[str], typer.Option("--seg-weights", help="Cityscapes-trained (19 classes) weights of --seg-model; without it the cross-entropy term is off.")] = None,
    *,
    run: RunArgs,
) -> int:
    """Train a Zero-DCE curve network with SCL-LLE's contrastive, semantic and feature losses."""
    from ..api import train_scl_lle

    cfg = SclTrainConfig(
        steps=steps, batch_size=batch_size, crop=crop, lr=lr, seed=seed, label_format=label_format,
        checkpoint_every=run.checkpoint_every, log_every=run.log_every,
        vgg=VggSpec(weights=vgg_weights), segmenter=SegSpec(arch=seg_model, weights=seg_weights),
    )
    return _train(train_scl_lle, (images, positives, negatives), output, cfg, run, labels=labels)
