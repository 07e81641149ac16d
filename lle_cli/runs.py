"""Run records of batches split in shards: each shard's own record, and ``lle runs merge`` joining them.

A shard's record (``lle-run.K-of-N.json`` in each output folder of the batch, written even when
the shard had nothing for that folder, so that a missing file always means a missing shard) holds
the usual run record plus ``shard`` (K, N, a digest of the whole batch's input keys, how many of
that folder's inputs the whole batch and this shard have) and ``inputs``: every input the shard was
given for that folder and what became of it (ok, skipped, error, partial). A merge can then prove
that the set is whole: every K present, none interrupted, every input accounted for exactly once,
all shards of the same batch (same inputs, model, weights and options).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import record
from .errors import RecordError
from .naming import parse_shard_record_name
from .shard import (
    Shard,
    input_roots,
    inputs_digest,
    shard_key,
    shard_number,
)

__all__ = [
    "InputOutcome",
    "MergeResult",
    "ShardPlan",
    "merge_shards",
    "outcome_of_job",
    "outcome_of_sample",
    "plan_shard",
    "shard_folders",
    "write_shard_records",
]


@dataclass
class InputOutcome:
    """What became of one input, for a shard's record."""

    input: str
    folder: Path | None  # the output folder whose record lists it
    status: str  # "ok", "skipped", "error" or "partial" (lle sample: some samples not written)
    error: str | None = None
    input_sha256: str | None = None
    seconds: float | None = None
    outputs: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (path, sha256, extra fields)


@dataclass
class ShardPlan:
    """One shard's part of a planned batch."""

    shard: Shard
    selected: list[bool]  # per item of the whole batch, in order
    digest: str  # of the whole batch's keys
    total: int
    folder_totals: dict[Path, int]  # every output folder of the whole batch -> its inputs in the whole batch
    folder_assigned: dict[Path, int]  # ... -> those given to this shard
    primary: Path | None  # where inputs without an output folder (failed planning) are recorded

    def folder(self, folder: Path | None) -> Path | None:
        return folder if folder is not None else self.primary

    def take(self, items: Sequence[Any]) -> list[Any]:
        return [x for x, keep in zip(items, self.selected) if keep]


def plan_shard(items: Sequence[tuple[str, Path | None]], inputs: Iterable[str], shard: Shard,
               default_folder: Path | None = None) -> ShardPlan:
    """Split the whole batch's ``(input path, output folder or None)`` items; every shard computes the same."""
    inputs = list(inputs)
    roots = input_roots(inputs)
    keys = [shard_key(p, roots) for p, _ in items]
    selected = [shard_number(k, shard.count) == shard.index for k in keys]
    folders = sorted({f for _, f in items if f is not None}, key=str)
    primary = default_folder if default_folder is not None else (folders[0] if folders else None)
    totals: dict[Path, int] = {f: 0 for f in folders}
    if primary is not None:
        totals.setdefault(primary, 0)
    assigned = dict.fromkeys(totals, 0)
    for (_, f), keep in zip(items, selected):
        where = f if f is not None else primary
        if where is None:
            continue
        totals[where] += 1
        assigned[where] += keep
    return ShardPlan(shard, selected, inputs_digest(keys), len(items), totals, assigned, primary)


def shard_folders(plan: ShardPlan) -> list[Path]:
    return list(plan.folder_totals)


def outcome_of_job(result: Any) -> InputOutcome:
    """A ``batch.JobResult`` as an ``InputOutcome``."""
    outs = []
    if result.status == "ok" and result.output and result.output != "-" and result.output_sha256:
        outs.append((result.output, result.output_sha256, {}))
    folder = Path(result.output).parent if result.output and result.output != "-" else None
    return InputOutcome(result.input, folder, result.status, result.error, result.input_sha256, result.seconds, outs)


def outcome_of_sample(path: str, result: Any, folder: Path | None) -> InputOutcome:
    """A ``sampling.SampleJobResult`` as an ``InputOutcome`` (its written samples and means hashed here)."""
    from .weights import sha256_file

    outs = []
    files = [(s["output"], {"seed": s["seed"], "tau": s["tau"], "offset": s["offset"]}) for s in result.samples]
    files += [(m["output"], {"mean_of": m.get("n")}) for m in result.means]
    for out, extra in files:
        if out and out != "-" and Path(out).is_file():
            outs.append((out, sha256_file(Path(out)), extra))
    in_sha = sha256_file(Path(path)) if outs and Path(path).is_file() else None
    return InputOutcome(path, folder, result.status, result.error, in_sha, result.seconds, outs)


def write_shard_records(base: dict[str, Any], outcomes: Iterable[InputOutcome], plan: ShardPlan,
                        *, interrupted: bool = False) -> list[Path]:
    """One ``lle-run.K-of-N.json`` run per output folder of the whole batch (``base``: ``record.new_run``)."""
    record.finish_run(base, **({"interrupted": True} if interrupted else {}))
    by_folder: dict[Path, list[InputOutcome]] = {f: [] for f in plan.folder_totals}
    for o in outcomes:
        where = plan.folder(o.folder)
        if where is not None:
            by_folder.setdefault(where, []).append(o)
    written = []
    for folder, items in by_folder.items():
        run = {k: v for k, v in base.items() if k != "outputs"}
        run["shard"] = {**plan.shard.fields(plan.digest, plan.total, plan.folder_assigned.get(folder, 0)),
                        "folder_total": plan.folder_totals.get(folder, 0)}
        run["outputs"] = []
        run["inputs"] = []
        for o in items:
            entry: dict[str, Any] = {"input": o.input, "status": o.status}
            if o.error:
                entry["error"] = o.error
            run["inputs"].append(entry)
            for path, sha, extra in o.outputs:
                record.add_output(run, path, sha256=sha, input=o.input, input_sha256=o.input_sha256, seconds=o.seconds, **extra)
        written.append(record.write_run(folder, run, name=plan.shard.record_name))
    return written


# ---- merging ---------------------------------------------------------------------------------------

# what must agree between the shards of one batch (their device, host and timing may differ)
_MODEL_KEYS = ("name", "family", "weights_sha256", "dtype")


@dataclass
class MergeResult:
    path: Path  # the lle-run.json written
    shards: int
    outputs: int
    inputs: int
    failed: int
    removed: list[Path]


def _load(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RecordError(f"{path}: not a readable run record ({e})") from None
    runs = data.get("runs") if isinstance(data, dict) and data.get("schema") == record.SCHEMA else None
    if not isinstance(runs, list) or not runs:
        raise RecordError(f"{path}: not an lle run record (schema {record.SCHEMA}); remove it or move it away")
    return [r for r in runs if isinstance(r, dict)]


def _identity(run: dict[str, Any]) -> tuple:
    model = run.get("model") or {}
    return (run.get("command"), tuple(model.get(k) for k in _MODEL_KEYS),
            json.dumps(run.get("options") or {}, sort_keys=True), (run.get("shard") or {}).get("inputs_digest"),
            (run.get("shard") or {}).get("folder_total"), run.get("seed"))


def merge_shards(directory: str | os.PathLike, *, keep: bool = False) -> MergeResult:
    """Join a folder's ``lle-run.K-of-N.json`` into one run appended to its ``lle-run.json``.

    Refuses (``RecordError``) a set with a shard missing or interrupted, an input unaccounted for
    or listed twice, or shards of different batches (inputs, model, weights, options or N). The
    shard files are removed once the merged run is written, unless ``keep``.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise RecordError(f"{folder}: no such folder")
    files: dict[int, Path] = {}
    counts: set[int] = set()
    for f in sorted(folder.iterdir()):
        parts = parse_shard_record_name(f.name)
        if parts and f.is_file():
            files[parts[0]] = f
            counts.add(parts[1])
    if not files:
        raise RecordError(f"{folder}: no shard records (lle-run.K-of-N.json) to merge")
    if len(counts) > 1:
        raise RecordError(f"{folder}: shard records of different splits ({', '.join(f'N={n}' for n in sorted(counts))}); "
                          "keep one batch's records in a folder")
    n = counts.pop()
    missing = [k for k in range(1, n + 1) if k not in files]
    if missing:
        names = ", ".join(f"{k}/{n}" for k in missing)
        raise RecordError(f"{folder}: incomplete: no record from shard {names}; run it (--shard {missing[0]}/{n}) and merge again")
    latest: dict[int, dict[str, Any]] = {}
    history: dict[int, list[dict[str, Any]]] = {}
    for k, path in sorted(files.items()):
        runs = _load(path)
        last = runs[-1]
        info = last.get("shard") or {}
        if info.get("index") != k or info.get("count") != n or not isinstance(last.get("inputs"), list):
            raise RecordError(f"{path}: its last run is not shard {k}/{n}'s record")
        if last.get("interrupted"):
            raise RecordError(f"{folder}: incomplete: shard {k}/{n} was interrupted; run it again with --skip-existing, then merge")
        if len(last["inputs"]) != info.get("inputs_assigned"):
            raise RecordError(f"{folder}: incomplete: shard {k}/{n} accounts for {len(last['inputs'])} of its "
                              f"{info.get('inputs_assigned')} inputs; run it again with --skip-existing, then merge")
        latest[k] = last
        # earlier runs of the same batch (a resumed shard) still describe outputs the last one skipped
        history[k] = [r for r in runs if _identity(r) == _identity(last)]
    first = latest[1]
    for k, run in latest.items():
        if _identity(run) != _identity(first):
            raise RecordError(f"{folder}: shard {k}/{n} is not of the same batch as shard 1/{n} "
                              "(different inputs, model, weights or options); merge only one batch's records")
    seen: dict[str, int] = {}
    inputs: list[dict[str, Any]] = []
    for k, run in latest.items():
        for item in run["inputs"]:
            name = item.get("input")
            if name in seen:
                raise RecordError(f"{folder}: {name} is in shard {seen[name]}/{n} and in shard {k}/{n}; "
                                  "these records are not one split")
            seen[name] = k
            inputs.append(item)
    total = first["shard"].get("folder_total")
    if len(inputs) != total:
        raise RecordError(f"{folder}: incomplete: the shards account for {len(inputs)} of the batch's {total} inputs here")
    outputs: dict[str, dict[str, Any]] = {}
    for k in latest:
        for run in history[k]:  # oldest first: later runs win
            for out in run.get("outputs") or []:
                if isinstance(out, dict) and isinstance(out.get("file"), str):
                    outputs[out["file"]] = out
    merged = {k: v for k, v in first.items() if k not in ("shard", "inputs", "outputs", "id", "started", "seconds")}
    merged.update({
        "id": record.new_run("merge")["id"],
        "started": min(str(r.get("started", "")) for r in latest.values()),
        "seconds": max((r.get("seconds") or 0.0) for r in latest.values()),  # the shards ran side by side
        "shards": [{"index": k, "id": r.get("id"), "started": r.get("started"), "seconds": r.get("seconds"),
                    "device": (r.get("model") or {}).get("device"), "platform": r.get("platform")}
                   for k, r in sorted(latest.items())],
        "inputs": sorted(inputs, key=lambda i: str(i.get("input"))),
        "outputs": sorted(outputs.values(), key=lambda o: o["file"]),
    })
    path = record.write_run(folder, merged)
    removed = []
    if not keep:
        for f in files.values():
            f.unlink()
            removed.append(f)
    failed = sum(1 for i in inputs if i.get("status") not in ("ok", "skipped"))
    return MergeResult(path, n, len(merged["outputs"]), len(inputs), failed, removed)
