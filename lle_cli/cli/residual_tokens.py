"""``lle residual-tokens``: interpret RAVE's residual vector through CLIP's vocabulary (paper Table 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from .. import api
from ..api import ClipSpec
from ..errors import OutputExistsError, UsageError
from ._common import (
    DeviceOpt, JsonOpt, OfflineOpt, QuietOpt, err_console, label_column, note, show_progress,
)


def residual_tokens(
    welllit: Annotated[Optional[Path], typer.Option("--welllit", help="Folder of well-lit images.")] = None,
    backlit: Annotated[Optional[Path], typer.Option("--backlit", help="Folder of backlit images.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="How many lowest and highest tokens to show.")] = 7,
    shift_tokens: Annotated[int, typer.Option("--shift-tokens", min=0, help="Apply RAVE's shift (Eq. 15-16) with N tokens first.")] = 0,
    save: Annotated[Optional[Path], typer.Option("--save", help="Write the (shifted) vector to this .safetensors file.")] = None,
    load: Annotated[Optional[Path], typer.Option("--load", help="Use a vector saved with --save instead of the folders.")] = None,
    clip_model: Annotated[str, typer.Option("--clip-model", help="open_clip architecture or JSON config.")] = "ViT-B-32",
    clip_pretrained: Annotated[str, typer.Option("--clip-pretrained", help="open_clip pretrained tag ('random' for smoke tests).")] = "openai",
    clip_weights: Annotated[Optional[Path], typer.Option("--clip-weights", help="Local file with those CLIP weights.")] = None,
    device: DeviceOpt = "auto",
    offline: OfflineOpt = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --save file.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> int:
    """Rank CLIP's whole vocabulary by cosine similarity to the residual vector (RAVE Eq. 14)."""
    if load is None and (welllit is None or backlit is None):
        raise UsageError("pass --welllit DIR and --backlit DIR, or --load VECTOR.safetensors")
    if load is not None and (welllit is not None or backlit is not None):
        raise UsageError("--load uses a saved vector; drop --welllit/--backlit (or drop --load to recompute)")
    if save is not None and save.exists() and not overwrite:
        raise OutputExistsError(f"{save}: already exists; pass --overwrite to replace it")
    spec = ClipSpec(model=clip_model, pretrained=clip_pretrained, weights=str(clip_weights) if clip_weights else None)
    progress = Progress(label_column(), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err_console, disable=not show_progress(quiet, json_out), transient=True)
    with progress:
        task = progress.add_task("embedding", total=None)

        def update(stage: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, description=stage)

        report = api.residual_tokens(welllit=welllit, backlit=backlit, top=top, shift_tokens=shift_tokens, save=save,
                                     load=load, clip=spec, device=device, offline=offline, progress=update)
    if json_out:
        print(json.dumps(report))
        return 0
    _print_table(report)
    if not quiet:
        extra = f"; saved to {save}" if save else ""
        note(f"CLIP {report['clip']}, {report['vocabulary']} tokens{extra}")
    return 0


def _print_table(report: dict) -> None:
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("lowest similarity")
    table.add_column("", justify="right")
    table.add_column("   highest similarity")
    table.add_column("", justify="right")
    for lo, hi in zip(report["lowest"], report["highest"]):
        table.add_row(lo["token"], f"{lo['score']:.3f}", f"   {hi['token']}", f"{hi['score']:.3f}")
    Console(highlight=False, soft_wrap=True).print(table)
