"""``lle train llflow`` and ``lle train synth-pairs``: train LLFlow on paired data, and make such data.

Thin commands: they validate flags, build the trainer's config and call the library (imported when a
command runs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..api import select_device
from ..errors import UsageError
from ._common import DeviceOpt, QuietOpt, err_console, show_progress
from .train_guided import OverwriteOpt, ResumeOpt, RunDirOpt, _check_output, _log

# the defaults of LLFlowTrainConfig (kept here so that `lle --help` does not import the trainer)
_ITERATIONS, _BATCH, _PATCH, _LR, _P = 45_000, 16, 160, 5e-4, 0.2


def llflow(
    data: Annotated[Path, typer.Option("--data", help="Folder with low/ and high/ (LOL layout, same file stems), or a CSV/JSON list of (low, high) pairs.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the trained .safetensors weights.")],
    config: Annotated[str, typer.Option("--config", help="Architecture: small (LOL_smallNet), standard (LOL-pc), tiny, or a JSON/YAML file of LLFlow config fields.")] = "small",
    coupling: Annotated[str, typer.Option("--coupling", help="affine (LLFlow) or rqs (robust flows' RQ-spline).")] = "affine",
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="Optimiser steps.")] = _ITERATIONS,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Global batch (split over torchrun processes).")] = _BATCH,
    patch: Annotated[int, typer.Option("--patch", min=8, help="Random crop size (a multiple of 8).")] = _PATCH,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = _LR,
    lr_milestones: Annotated[str, typer.Option("--lr-milestones", help="Fractions of the run where the rate is multiplied by --lr-gamma.")] = "0.5,0.75,0.9,0.95",
    lr_gamma: Annotated[float, typer.Option("--lr-gamma")] = 0.5,
    gt_mean_probability: Annotated[float, typer.Option("--gt-mean-probability", help="Probability that a sample's latent mean is its target's colour map instead of g(x) (paper: 0.2).")] = _P,
    dequantize: Annotated[bool, typer.Option("--dequantize/--no-dequantize", help="Add uniform dequantisation noise to the targets (quant 32); upstream training does not.")] = False,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips.")] = True,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", min=0.0, help="Clip the gradient norm (0: off, as upstream).")] = 0.0,
    precision: Annotated[str, typer.Option("--precision", help="fp32, or bf16 autocast on CUDA.")] = "fp32",
    val_data: Annotated[Optional[Path], typer.Option("--val-data", help="Validation pairs (same layouts as --data): PSNR/SSIM at tau 0, non-finite samples at tau 1.")] = None,
    val_every: Annotated[int, typer.Option("--val-every", min=0, help="Validate every N iterations (0: only at the end).")] = 0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    init_weights: Annotated[Optional[Path], typer.Option("--init-weights", help="Start from these LLFlow weights (same architecture) instead of a fresh model.")] = None,
    run_dir: RunDirOpt = None,
    resume: ResumeOpt = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=1)] = 1000,
    log_every: Annotated[int, typer.Option("--log-every", min=1, help="Write metrics.jsonl every N iterations.")] = 10,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Train LLFlow (affine or RQ-spline couplings) on paired low/normal-light images; runs under torchrun too."""
    from ..api import LLFlowTrainConfig, train_llflow

    _check_output(output, overwrite)
    try:
        milestones = tuple(float(v) for v in lr_milestones.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--lr-milestones {lr_milestones!r}: expected comma-separated fractions, e.g. 0.5,0.75") from None
    cfg = LLFlowTrainConfig(
        model=config, coupling=coupling, iterations=iterations, batch_size=batch_size, patch=patch, lr=lr,
        lr_milestones=milestones, lr_gamma=lr_gamma, gt_mean_probability=gt_mean_probability, dequantize=dequantize,
        flip=flip, max_grad_norm=max_grad_norm, precision=precision, seed=seed, checkpoint_every=checkpoint_every,
        log_every=log_every, val_every=val_every,
    )
    columns = (TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("NLL {task.fields[nll]:.4f}"),
               TextColumn("{task.fields[speed]:.2f} it/s"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=not show_progress(quiet, False)) as bar:
        task = bar.add_task("train", total=iterations, nll=float("nan"), speed=0.0)
        result = train_llflow(
            data, output, cfg, val_data=val_data, run_dir=run_dir, resume=resume, init_weights=init_weights,
            device=select_device(device), log=_log(quiet),
            progress=lambda s, n, nll, speed: bar.update(task, completed=s, total=n, nll=nll, speed=speed),
        )
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    if not quiet:
        resumed = f" (resumed at iteration {result.resumed_from})" if result.resumed_from else ""
        err_console.print(f"trained {result.steps} iterations{resumed} on {result.images} pairs in {result.seconds:.0f} s; "
                          f"final NLL {result.final_loss:.4f} bits/pixel; run directory {result.run_dir}")
    print(result.output)
    return 0


def synth_pairs(
    positives: Annotated[Path, typer.Argument(help="Folder of well-exposed images (searched recursively).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to create low/ and high/ in (LOL layout) plus pairs.json.")],
    variants: Annotated[int, typer.Option("--variants", min=1, help="Degraded versions of each image.")] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    jpeg_probability: Annotated[Optional[float], typer.Option("--jpeg-probability", min=0.0, max=1.0, help="Fraction of low images JPEG-compressed (default 0.5 for camera, 0 for classic).")] = None,
    degradation: Annotated[str, typer.Option("--degradation", help="camera (casts, blur, tone curves, JPEG, heavy read noise) or classic (exposure, noise, gamma only).")] = "camera",
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Make synthetic low/normal-light pairs: exposure, colour cast, blur, sensor noise, tone curve, JPEG (lle_cli.degrade)."""
    import dataclasses

    from ..api import DegradeSpec, write_synthetic_pairs

    if degradation not in ("camera", "classic"):
        raise UsageError(f"--degradation {degradation!r}: expected camera or classic")
    spec = DegradeSpec() if degradation == "camera" else DegradeSpec.classic()
    if jpeg_probability is not None:
        spec = dataclasses.replace(spec, jpeg_probability=jpeg_probability)

    with Progress(TextColumn("degrading"), BarColumn(), MofNCompleteColumn(), console=err_console,
                  disable=not show_progress(quiet, False)) as bar:
        task = bar.add_task("synth", total=None)
        records = write_synthetic_pairs(
            positives, output, variants=variants, seed=seed, spec=spec,
            overwrite=overwrite, progress=lambda i, n: bar.update(task, completed=i, total=n),
        )
    if not quiet:
        err_console.print(f"wrote {len(records)} pairs to {output}/low and {output}/high (recipe in {output}/pairs.json)")
    print(output)
    return 0
