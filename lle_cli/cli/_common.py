"""Options shared by several commands, and the stderr console."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

err_console = Console(stderr=True, highlight=False)

ModelOpt = Annotated[
    Optional[str], typer.Option("--model", "-m", help="Model name or alias (see `lle models list`); default: the embedded model.")
]
WeightsOpt = Annotated[
    Optional[Path], typer.Option("--weights", "-w", help="Use this weights file (.safetensors, or an authors' .pth) instead of the cache.")
]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", "-p", help="auto (fp32 on CPU, fp16 on GPU), fp32, fp16 or bf16.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary on stderr.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object per result on stdout.")]


def show_progress(quiet: bool, json_out: bool) -> bool:
    return not quiet and not json_out and sys.stderr.isatty()


OfflineOpt = Annotated[
    bool, typer.Option("--offline", help="Never use the network (as HF_HUB_OFFLINE=1): use only weights already on this machine.")
]


@contextmanager
def download_progress(enabled: bool) -> Iterator[Callable[[str, int, Optional[int]], None] | None]:
    """A ``progress(label, done, total)`` callback drawing byte bars on stderr, or None when disabled.

    The bar appears only once bytes move, so a cache hit prints nothing.
    """
    if not enabled or os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").lower() in {"1", "true", "yes", "on"}:
        yield None
        return
    bars = Progress(
        TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=err_console, transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def update(label: str, done: int, total: Optional[int]) -> None:
        if not tasks:
            bars.start()
        if label not in tasks:
            tasks[label] = bars.add_task(label, total=total)
        bars.update(tasks[label], completed=done, total=total)

    try:
        yield update
    finally:
        if tasks:
            bars.stop()
