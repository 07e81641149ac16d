"""``lle train iat``: train IAT's architecture as a photo model (real pairs + synthetic + identity pairs).

A thin command: it validates flags, builds the trainer's config and calls the library (imported when
the command runs, so that ``lle --help`` stays fast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..api import select_device
from ._common import DeviceOpt, QuietOpt, err_console, show_progress
from .train_guided import OverwriteOpt, ResumeOpt, RunDirOpt, _check_output, _log

# the defaults of IATTrainConfig (kept here so that `lle --help` does not import the trainer)
_STEPS, _BATCH, _CROP, _LR, _P_REAL, _P_SYNTH = 4000, 8, 96, 4e-4, 0.5, 0.3


def iat(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the trained .safetensors weights.")],
    real: Annotated[Optional[Path], typer.Option("--real", help="Real pairs: a folder with low/ and high/ (same file names); the last --val-pairs names are held out.")] = None,
    photos: Annotated[Optional[list[Path]], typer.Option("--photos", help="Folder of well-exposed photos for synthetic dark pairs and identity pairs (repeatable).")] = None,
    val_photos: Annotated[Optional[Path], typer.Option("--val-photos", help="Well-exposed photos never trained on: validation of the identity (should stay unchanged).")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimiser steps.")] = _STEPS,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = _BATCH,
    crop: Annotated[int, typer.Option("--crop", min=32, help="Random crop size.")] = _CROP,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate (cosine decay).")] = _LR,
    p_real: Annotated[float, typer.Option("--p-real", min=0.0, max=1.0, help="Share of real pairs in a batch.")] = _P_REAL,
    p_synth: Annotated[float, typer.Option("--p-synth", min=0.0, max=1.0, help="Share of synthetic dark pairs; the rest are identity pairs.")] = _P_SYNTH,
    val_pairs: Annotated[int, typer.Option("--val-pairs", min=0, help="Real pairs held out for validation.")] = 8,
    val_every: Annotated[int, typer.Option("--val-every", min=1)] = 250,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=1)] = 250,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    highlight_weight: Annotated[float, typer.Option("--highlight-weight", min=0.0, help="Penalty on colours mixed past white before IAT's clamp (keeps highlights).")] = 1.0,
    init_weights: Annotated[Optional[Path], typer.Option("--init-weights", help="Start from these IAT weights (fine-tuning) instead of a fresh model.")] = None,
    run_dir: RunDirOpt = None,
    resume: ResumeOpt = None,
    device: DeviceOpt = "cpu",
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Train IAT (90 K parameters) on real pairs, synthetic dark photos and well-lit photos kept as they are."""
    from ..train.iat import IATTrainConfig, train_iat

    _check_output(output, overwrite)
    cfg = IATTrainConfig(steps=steps, batch_size=batch_size, crop=crop, lr=lr, p_real=p_real, p_synth=p_synth,
                         val_pairs=val_pairs, val_every=val_every, checkpoint_every=checkpoint_every, seed=seed,
                         highlight_weight=highlight_weight)
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=not show_progress(quiet, False)) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        result = train_iat(
            real, list(photos or []), output, cfg, val_photos=val_photos, init_weights=init_weights, run_dir=run_dir, resume=resume,
            device=select_device(device), log=_log(quiet),
            progress=lambda s, n, loss: bar.update(task, completed=s, total=n, loss=loss),
        )
    if not quiet:
        resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
        err_console.print(f"trained {result.steps} steps{resumed} on {result.images} images in {result.seconds:.0f} s; "
                          f"final loss {result.final_loss:.4f}; run directory {result.run_dir}")
    print(result.output)
    return 0
