"""Options shared by several commands, and the stderr console."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

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
