"""``lle models``: list, describe and import models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .. import api, cache
from ..loading import weights_location
from ._common import JsonOpt, err_console

app = typer.Typer(help="List, describe and import models.", no_args_is_help=True)


def _where(entry) -> str:
    return weights_location(entry) or "-"


@app.command("list")
def list_models(json_out: JsonOpt = False) -> int:
    """Table of every registered model and whether its weights are here."""
    entries = api.list_models()
    if json_out:
        for e in entries:
            print(json.dumps({"name": e.name, "family": e.family, "task": e.task, "parameters": e.parameters,
                              "license": e.license, "weights": weights_location(e)}))
        return 0
    table = Table(title=None, box=None, header_style="bold")
    for col in ("name", "family", "task", "params", "licence", "weights"):
        table.add_column(col, overflow="fold")
    for e in entries:
        lic = e.license if len(e.license) < 28 else e.license[:25] + "..."
        table.add_row(e.name, e.family, e.task, f"{e.parameters:,}", lic, _where(e))
    Console(soft_wrap=False, width=max(Console().width, 110)).print(table)
    return 0


@app.command("info")
def info(name: Annotated[str, typer.Argument(help="Model name or alias.")], json_out: JsonOpt = False) -> int:
    """Everything the manifest knows about one model."""
    e = api.model_info(name)
    data = {
        "name": e.name, "family": e.family, "task": e.task, "title": e.title, "paper": e.paper, "license": e.license,
        "training_data": e.training_data, "parameters": e.parameters, "architecture": e.architecture,
        "weights": weights_location(e), "cache_path": str(cache.cached_weights_path(e.name)),
        "hub": e.hub.__dict__ if e.hub else None, "upstream": e.upstream.__dict__ if e.upstream else None,
        "embedded": e.embedded, "training": e.training, "notes": e.notes,
    }
    if json_out:
        print(json.dumps(data, indent=2))
        return 0
    for k, v in data.items():
        if v in (None, "", {}):
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items() if b is not None)
        print(f"{k:14} {v}")
    return 0


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="An authors' checkpoint (.pth) or a safetensors file.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Which model this file is; default: recognised by its sha256.")] = None,
    trust_unknown: Annotated[bool, typer.Option("--trust-unknown", help="Import even if the sha256 is not the manifest's.")] = False,
) -> int:
    """Verify a checkpoint's sha256, load it safely and store it as safetensors in the cache."""
    r = api.import_checkpoint(file, model, trust_unknown=trust_unknown)
    if not r.verified:
        err_console.print(f"[yellow]Warning:[/yellow] {file}: sha256 not in the manifest; imported because of --trust-unknown")
    err_console.print(f"imported {r.model} (sha256 {r.source_sha256[:12]}...)")
    print(r.path)
    return 0
