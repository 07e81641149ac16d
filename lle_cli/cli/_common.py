"""Options shared by several commands, and the stderr console."""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.text import Text

# Markup off: every message may carry a user's path, and "a [red]b.png" or "dir[/x]" must print as
# written (rich would swallow the first and crash on the second). Without a terminal (logs, CI),
# lines are never wrapped, so a path stays on one line.
err_console = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=not sys.stderr.isatty())


def say(message: str, style: str = "") -> None:
    """One line on stderr, printed literally (progress bars stay below it)."""
    err_console.print(Text(message, style=style), soft_wrap=True)


def error(message: str) -> None:
    """The one way an error reaches the user: ``Error: <message>`` on stderr, literally."""
    err_console.print(Text.assemble(("Error: ", "bold red"), message), soft_wrap=True)


def warning(message: str) -> None:
    err_console.print(Text.assemble(("Warning: ", "yellow"), message), soft_wrap=True)


def note(message: str) -> None:
    """Secondary information (model used, run record path), dimmed."""
    say(message, "dim")


def label_column() -> TextColumn:
    """A progress column showing the task's description (often a file name) without markup."""
    return TextColumn("{task.description}", markup=False)

ModelOpt = Annotated[
    Optional[str], typer.Option("--model", "-m", help="Model name or alias (see `lle models list`); default: the embedded model.")
]
WeightsOpt = Annotated[
    Optional[Path], typer.Option("--weights", "-w", help="Use this weights file (.safetensors, or an authors' .pth) instead of the cache.")
]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", "-p", help="auto (GPU: fp16; CPU: fp32, or bf16 autocast for the families measured within one 8-bit level of fp32 and faster, on a CPU with native bf16), fp32, fp16 or bf16.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary on stderr.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object per result on stdout.")]
# past one process (lle_cli.shard, lle_cli.workers, lle_cli.ray_backend); lle enhance and lle sample
ShardOpt = Annotated[
    Optional[str], typer.Option("--shard", help="K/N: run only part K of N of the inputs (job arrays: SLURM, Kubernetes); each part writes lle-run.K-of-N.json; join them with `lle runs merge`.")
]
WorkersOpt = Annotated[
    Optional[int], typer.Option("--workers", help="Processes (or Ray actors) each with its own copy of the model. Default: one process.")
]
ThreadsOpt = Annotated[
    Optional[int], typer.Option("--threads-per-worker", help="Torch threads per worker. Default: the cores shared out among the workers.")
]
RayOpt = Annotated[
    Optional[str], typer.Option("--ray", help="Run on Ray actors (the ray extra): local (a private cluster for this run), auto (the cluster `ray start` made here, or RAY_ADDRESS) or an address.")
]


OodStatsOpt = Annotated[
    Optional[Path], typer.Option("--ood-stats", help="LLFlow models: warn about inputs above these `lle score-ood fit` statistics' threshold (default: the model's shipped ones).")
]


def with_options(*groups: Callable[..., object]):
    """Give a command the options of ``groups``, each gathered into one argument.

    A group is a function whose typed keyword parameters are options; the command receives what it
    returns under the group's name. Typer builds a command's options from its signature, so the
    wrapper's signature is the command's own parameters followed by every group's (which is also
    where ``--help`` lists them).
    """

    def wrap(command: Callable[..., int]) -> Callable[..., int]:
        sig = inspect.signature(command, eval_str=True)
        grouped = {g.__name__: list(inspect.signature(g, eval_str=True).parameters.values()) for g in groups}
        own = [p for p in sig.parameters.values() if p.name not in grouped]
        params = own + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for ps in grouped.values() for p in ps]

        @functools.wraps(command)
        def with_groups(**kwargs: Any) -> int:
            for g in groups:
                kwargs[g.__name__] = g(**{p.name: kwargs.pop(p.name) for p in grouped[g.__name__]})
            return command(**kwargs)

        with_groups.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        with_groups.__annotations__ = {p.name: p.annotation for p in params} | {"return": sig.return_annotation}
        return with_groups

    return wrap


@dataclass(frozen=True)
class BatchArgs:
    """How a batch command (``lle enhance``, ``lle sample``) reports and spreads its work: the ``batch`` group."""

    quiet: bool
    json_out: bool
    ood_stats: Optional[Path]
    # typed loosely: the CLI reaches the library only through lle_cli.api, which loads these lazily
    shard: Any  # --shard K/N as api.parse_shard gives it (a Shard), or None
    parallel: Any  # --workers / --threads-per-worker / --ray as api.check_parallel gives them, or None: this process


def batch(
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    ood_stats: OodStatsOpt = None,
    shard: ShardOpt = None,
    workers: WorkersOpt = None,
    threads_per_worker: ThreadsOpt = None,
    ray: RayOpt = None,
) -> BatchArgs:
    """The ``batch`` option group. A bad ``--shard`` or ``--workers`` fails here, before the command
    reads an input or loads a model."""
    from .. import api

    part = api.parse_shard(shard)
    return BatchArgs(quiet, json_out, ood_stats, part, api.check_parallel(workers, threads_per_worker, ray))


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
        TextColumn("downloading {task.description}", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
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
