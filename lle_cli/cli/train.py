"""``lle train``: train models with the project's own training code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import OutputExistsError
from ..api import ZeroDCETrainConfig, ZeroReferenceWeights, select_device, train_zero_dce
from ._common import (
    DeviceOpt, QuietOpt, err_console, note, show_progress,
)

app = typer.Typer(help="Train models.", no_args_is_help=True)
_D = ZeroDCETrainConfig()


@app.command("zero-dce")
def zero_dce(
    data: Annotated[Path, typer.Argument(help="Folder of unpaired training images (under- and over-exposed).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .safetensors weights.")],
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = _D.steps,
    batch_size: Annotated[int, typer.Option(min=1)] = _D.batch_size,
    crop: Annotated[int, typer.Option(min=16, help="Random crop size (after resizing to --resize).")] = _D.crop,
    resize: Annotated[int, typer.Option(min=16)] = _D.resize,
    lr: Annotated[float, typer.Option()] = _D.lr,
    exposure: Annotated[float, typer.Option(help="Well-exposedness level E of the exposure loss.")] = _D.losses.exposure_level,
    seed: Annotated[int, typer.Option()] = _D.seed,
    device: DeviceOpt = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    quiet: QuietOpt = False,
    record: Annotated[bool, typer.Option("--record", help="Write a run record (lle-run.json) beside the weights.")] = False,
) -> int:
    """Train a Zero-DCE curve network with the zero-reference losses (the embedded model's recipe)."""
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: already exists; pass --overwrite to replace it")
    cfg = ZeroDCETrainConfig(
        steps=steps, batch_size=batch_size, crop=crop, resize=resize, lr=lr, seed=seed,
        losses=ZeroReferenceWeights(exposure_level=exposure),
    )
    with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                  TimeRemainingColumn(), console=err_console, disable=not show_progress(quiet, False)) as progress:
        task = progress.add_task("train", total=steps, loss=float("nan"))
        result = train_zero_dce(data, output, cfg, device=select_device(device),
                                progress=lambda s, n, loss: progress.update(task, completed=s, loss=loss))
    if not quiet:
        err_console.print(f"trained {result.steps} steps on {result.images} images in {result.seconds:.0f} s; final loss {result.final_loss:.4f}")
    if record:
        from dataclasses import asdict

        from .. import record as run_record
        from ..formats import IMAGE_SUFFIXES

        path = run_record.write_training_record(
            output, family="zero_dce", data=data, options={"config": asdict(cfg)}, seed=cfg.seed, device=str(device),
            seconds=result.seconds, suffixes=IMAGE_SUFFIXES, final_loss=result.final_loss,
        )
        if not quiet:
            note(f"run record: {path}")
    print(output)
    return 0


# the CLIP-guided and contrastive trainers live in their own module
from . import train_guided as _guided  # noqa: E402

app.command("rave")(_guided.rave)
app.command("clip-lit-latent")(_guided.clip_lit_latent)
app.command("scl-lle")(_guided.scl_lle)

# the flow trainer and its synthetic data
from . import train_flow as _flow  # noqa: E402

app.command("llflow")(_flow.llflow)
app.command("synth-pairs")(_flow.synth_pairs)

# IAT's architecture as a photo model
from . import train_iat as _iat  # noqa: E402

app.command("iat")(_iat.iat)
