"""Run records: a small JSON beside a run's outputs that says exactly what produced them.

A record holds the lle version, the command, the model (name, family, weights sha256 and where
they came from), device, dtype, seed, the options, timing, and for each output file its sha256
and its input's path and sha256. Records live in ``lle-run.json`` in the outputs' folder; a later
run into the same folder is appended, so the file is the folder's history. ``lle eval`` reads it
to tell which run wrote each prediction, and whether the file changed since.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, cache
from .atomic import write_text_atomic
from .naming import RECORD_GLOB, RECORD_NAME, record_name
from .digest import sha256_file

if TYPE_CHECKING:  # a record needs no model code: --runtime onnx runs without PyTorch
    from .runner import LoadedModel

__all__ = [
    "RECORD_NAME",
    "SCHEMA",
    "sha256_bytes",
    "model_fields",
    "new_run",
    "add_output",
    "finish_run",
    "write_run",
    "read_runs",
    "index_outputs",
    "describe_run",
    "write_job_records",
    "folder_digest",
    "write_training_record",
]

SCHEMA = 1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def model_fields(model: LoadedModel) -> dict[str, Any]:
    """Name, family, weights source and sha256 of a loaded model, plus device and dtype."""
    entry = model.entry
    source = model.weights_source
    info: dict[str, Any] = {"name": entry.name, "family": entry.family, "weights_source": source}
    if source == "embedded":
        info["weights_sha256"] = entry.embedded_sha256  # verified against this when it was loaded
    elif Path(source).is_file():
        info["weights_sha256"] = sha256_file(Path(source))
        imported = cache.read_record(entry.name) if Path(source) == cache.cached_weights_path(entry.name) else None
        if imported and imported.get("source_sha256"):
            info["original_sha256"] = imported["source_sha256"]  # the authors' file it was converted from
    info["device"] = str(model.device)
    info["dtype"] = str(model.dtype).removeprefix("torch.")
    if getattr(model, "autocast", False):  # --precision auto chose bf16 autocast (lle_cli.device)
        info["precision"] = "bf16 autocast (float32 weights), chosen by --precision auto"
    elif info["dtype"] == "bfloat16" and getattr(model, "runtime_info", None):  # OpenVINO compiled in bf16
        info["precision"] = "bf16 (OpenVINO's INFERENCE_PRECISION_HINT)"
    runtime = getattr(model, "runtime_info", None)  # --runtime onnx|openvino: the engine and the file it ran
    if runtime:
        info["runtime"] = dict(runtime)
    return info


def _torch_version() -> str | None:
    """The PyTorch this process runs, or the installed one when it never imported it (--runtime onnx)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.__version__
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:  # not installed as a distribution: nothing to record
        return None


def new_run(
    command: str,
    *,
    model: LoadedModel | Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """A fresh record for one run; ``finish_run`` stamps its duration."""
    return {
        "schema": SCHEMA,
        "id": uuid.uuid4().hex[:12],
        "command": command,
        "lle_version": __version__,
        "torch_version": _torch_version(),
        "python_version": platform.python_version(),
        "platform": platform.platform(terse=True),
        "started": _now(),
        "seconds": None,
        "model": (dict(model) if isinstance(model, Mapping) else model_fields(model)) if model else None,
        "seed": seed,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in (options or {}).items()},
        "outputs": [],
        "_t0": time.perf_counter(),
    }


def add_output(
    run: dict[str, Any],
    output: str | os.PathLike,
    *,
    sha256: str,
    input: str | None = None,
    input_sha256: str | None = None,
    seconds: float | None = None,
    **extra: Any,
) -> None:
    item: dict[str, Any] = {"file": Path(output).name, "sha256": sha256}
    if input is not None:
        item["input"] = str(input)
        item["input_sha256"] = input_sha256
    if seconds is not None:
        item["seconds"] = round(seconds, 4)
    item.update(extra)
    run["outputs"].append(item)


def finish_run(run: dict[str, Any], **extra: Any) -> dict[str, Any]:
    t0 = run.pop("_t0", None)
    if t0 is not None:
        run["seconds"] = round(time.perf_counter() - t0, 3)
    run.update(extra)
    return run


def _atomic_write(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def _load(path: Path) -> list[dict[str, Any]] | None:
    """The runs in a record file; None if it is not a record lle can read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("runs"), list):
        return None
    return [r for r in data["runs"] if isinstance(r, dict)]


def write_run(directory: str | os.PathLike, run: dict[str, Any], *, name: str = RECORD_NAME) -> Path:
    """Append ``run`` to ``directory/lle-run.json`` (atomically); returns the file written.

    A file of that name that is not an lle record is left alone: the run goes to
    ``lle-run.<id>.json`` instead. ``name``: another record file (a shard's ``lle-run.K-of-N.json``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    run = {k: v for k, v in run.items() if not k.startswith("_")}
    path = directory / name
    runs: list[dict[str, Any]] = []
    if path.exists():
        existing = _load(path)
        if existing is None:
            path = directory / record_name(run["id"])
        else:
            runs = existing
    runs.append(run)
    _atomic_write(path, json.dumps({"schema": SCHEMA, "runs": runs}, indent=1, allow_nan=False) + "\n")
    return path


def read_runs(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run recorded in a folder, oldest first."""
    directory = Path(directory)
    files = [directory / RECORD_NAME] + sorted(directory.glob(RECORD_GLOB))
    runs: list[dict[str, Any]] = []
    for f in files:
        if f.is_file():
            runs.extend(_load(f) or [])
    return runs


def index_outputs(directory: str | os.PathLike) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """File name -> (run, output entry) for every recorded output in a folder; later runs win."""
    index: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for run in read_runs(directory):
        for out in run.get("outputs") or []:
            if isinstance(out, dict) and isinstance(out.get("file"), str):
                index[out["file"]] = (run, out)
    return index


def describe_run(run: Mapping[str, Any]) -> str:
    """One line: what produced a run's outputs."""
    m = run.get("model") or {}
    parts = [f"lle {run.get('lle_version', '?')} {run.get('command', '?')}"]
    if m:
        sha = m.get("weights_sha256") or "?"
        parts.append(f"model {m.get('name', '?')} (weights {m.get('weights_source', '?')}, sha256 {sha[:12]})")
        parts.append(f"{m.get('device', '?')}/{m.get('dtype', '?')}")
    if run.get("seed") is not None:
        parts.append(f"seed {run['seed']}")
    opts = {k: v for k, v in (run.get("options") or {}).items() if v not in (None, False)}
    if opts:
        parts.append("options " + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())))
    parts.append(f"at {run.get('started', '?')}")
    return "; ".join(parts)


def write_job_records(
    model: LoadedModel, results: Iterable[Any], *, command: str, options: Mapping[str, Any], run: dict[str, Any] | None = None,
    interrupted: bool = False,
) -> list[Path]:
    """One record per output folder for the written files of a batch (``batch.JobResult`` items).

    ``interrupted``: the batch stopped early (Ctrl-C); the record says so and lists what was written.
    """
    base = run or new_run(command, model=model, options=options)
    finish_run(base, **({"interrupted": True} if interrupted else {}))
    by_dir: dict[Path, list[Any]] = {}
    for r in results:
        if r.status == "ok" and r.output and r.output != "-" and r.output_sha256:
            by_dir.setdefault(Path(r.output).parent, []).append(r)
    written = []
    for directory, items in by_dir.items():
        run_d = {k: v for k, v in base.items() if k != "outputs"}
        run_d["outputs"] = []
        for r in items:
            add_output(run_d, r.output, sha256=r.output_sha256, input=r.input, input_sha256=r.input_sha256, seconds=r.seconds)
        written.append(write_run(directory, run_d))
    return written


def folder_digest(folder: str | os.PathLike, suffixes: Iterable[str] | None = None) -> tuple[str, int]:
    """(sha256, count) over a folder's files (recursive): each file's relative path and sha256, sorted."""
    root = Path(folder)
    keep = {s.lower() for s in suffixes} if suffixes else None
    files = sorted(p for p in root.rglob("*") if p.is_file() and (keep is None or p.suffix.lower() in keep))
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(root).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest(), len(files)


def write_training_record(
    output: str | os.PathLike,
    *,
    family: str,
    data: str | os.PathLike,
    options: Mapping[str, Any],
    seed: int | None,
    device: str,
    seconds: float,
    suffixes: Iterable[str] | None = None,
    **extra: Any,
) -> Path:
    """Record a training run beside the weights it wrote: the data's digest is the output's input."""
    out = Path(output)
    digest, count = folder_digest(data, suffixes)
    run = new_run("train", model={"name": out.stem, "family": family, "weights_source": str(out),
                                  "weights_sha256": sha256_file(out), "device": device, "dtype": "float32"},
                  options=options, seed=seed)
    run.pop("_t0", None)
    run["seconds"] = round(seconds, 3)
    add_output(run, out, sha256=run["model"]["weights_sha256"], input=str(data), input_sha256=digest, images=count)
    run.update(extra)
    return write_run(out.parent, run)
