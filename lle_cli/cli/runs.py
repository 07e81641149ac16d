"""``lle runs``: work with run records (``lle-run.json``); ``merge`` joins the records of a sharded batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .. import api
from ._common import JsonOpt, QuietOpt, note

app = typer.Typer(help="Work with run records (lle-run.json).", no_args_is_help=True)


@app.command("merge")
def merge(
    folder: Annotated[Path, typer.Argument(help="An output folder holding lle-run.K-of-N.json from every shard.", show_default=False)],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also merge the shard records of its sub-folders (a --recursive batch).")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the shard records after merging (by default they are removed: lle-run.json holds them).")] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> int:
    """Join the run records of a batch split with --shard K/N into one run in lle-run.json.

    Refused (exit 1) while a shard is missing, was interrupted or left inputs unaccounted for, or when the records belong to different batches.
    """
    folders = [folder]
    if recursive and folder.is_dir():
        # every folder of the tree holding shard records; each is merged on its own
        folders = sorted({p.parent for p in folder.rglob(api.SHARD_RECORD_GLOB)} | {folder}, key=str)
        folders = [f for f in folders if f == folder or any(api.SHARD_RECORD.match(p.name) for p in f.iterdir())]
    for f in folders:
        if recursive and f == folder and not any(api.SHARD_RECORD.match(p.name) for p in f.iterdir()) and len(folders) > 1:
            continue  # the top folder of a recursive batch may hold no outputs of its own
        r = api.merge_shards(f, keep=keep)
        if json_out:
            print(json.dumps({"record": str(r.path), "shards": r.shards, "inputs": r.inputs, "outputs": r.outputs,
                              "failed": r.failed, "removed": [str(p) for p in r.removed]}), flush=True)
        else:
            print(r.path, flush=True)
            if not quiet:
                note(f"{f}: {r.shards} shards merged: {r.inputs} inputs, {r.outputs} outputs, {r.failed} failed")
    return 0
