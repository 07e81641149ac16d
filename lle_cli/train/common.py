"""Machinery shared by every trainer: checkpoints with resume, a metrics log, DDP, data helpers.

* **Checkpoints** are, per save, ``step-N.safetensors`` (modules and extra tensors; its ``lle``
  metadata holds the step and the run's JSON metadata), ``step-N.optim.safetensors`` (the optimisers'
  tensors, their non-tensor state in its metadata; only needed to resume, so a checkpoint can be
  shared or evaluated without it) and a human-readable JSON sidecar ``step-N.json`` (step, the sha256
  of both files, metadata). No pickles anywhere. ``load_checkpoint`` verifies both sha256s from the
  sidecar when there is one.
* **Randomness** is stateless: the generator of step ``s`` on rank ``r`` is seeded from
  ``(seed, s, r)``, and batches come from per-epoch permutations seeded from ``(seed, epoch)``. A run
  resumed from a checkpoint therefore draws exactly the batches it would have drawn, with no RNG state
  to save, whatever the number of data-loader workers.
* **Metrics** go to ``metrics.jsonl`` (one JSON object per logged step). On resume the lines after the
  checkpoint's step are dropped, so the log always describes the weights.
* **DDP**: ``init_distributed`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``) and uses NCCL on CUDA, gloo on CPU. Only rank 0 writes files or reports progress.
"""

from __future__ import annotations

import hashlib
import math
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import write_text_atomic
from ..errors import InputError, UsageError, WeightsError
from ..weights import load_safetensors, save_safetensors, sha256_file

__all__ = [
    "Dist",
    "init_distributed",
    "shutdown_distributed",
    "all_reduce_mean",
    "broadcast_",
    "barrier",
    "wrap_ddp",
    "unwrap",
    "step_generator",
    "batch_indices",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "prune_checkpoints",
    "resolve_resume",
    "resume_training",
    "check_run_dir",
    "check_resume_config",
    "MetricsLog",
    "jsonable",
    "save_trained_weights",
    "load_images_resized",
    "augment_batch",
    "optimise",
    "ProgressFn",
    "RunOptions",
    "LogFn",
]

ProgressFn = Callable[[int, int, float], None]  # (step, total steps, loss)
LogFn = Callable[[str], None]  # one line for the user (stderr), e.g. "semantic term off: no --labels"
CHECKPOINT_FORMAT = 2
_CKPT_RE = re.compile(r"^step-(\d+)\.safetensors$")


# ---- distributed ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun process group if there is one; returns the rank info and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local), device


def shutdown_distributed(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def all_reduce_mean(value: float, d: Dist, device: torch.device | None = None) -> float:
    if not d.enabled:
        return float(value)
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(t)
    return float(t.item()) / d.world_size


def broadcast_(tensor: torch.Tensor, d: Dist, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` in place with rank ``src``'s copy."""
    if d.enabled:
        import torch.distributed as dist

        dist.broadcast(tensor, src)
    return tensor


def barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def wrap_ddp(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


@dataclass
class TrainResult:
    """What a trainer returns: where the weights went, how long it took, the last loss."""

    output: Path
    run_dir: Path
    steps: int
    seconds: float
    final_loss: float
    images: int
    resumed_from: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


# ---- stateless randomness ---------------------------------------------------------------------
def _seed(*parts: int) -> int:
    h = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, step, rank, stream)``."""
    return torch.Generator().manual_seed(_seed(seed, step, rank, stream))


def batch_indices(n: int, step: int, batch: int, seed: int, d: Dist = Dist(), stream: int = 0) -> torch.Tensor:
    """Indices into ``n`` items for this rank's share of global step ``step`` (1-based).

    Epochs are permutations of all items (seeded per epoch); the global batch of ``batch * world``
    items is cut from consecutive positions, and each rank takes its own slice of it.
    """
    if n < 1:
        raise InputError("no training items")
    start = (step - 1) * batch * d.world_size + d.rank * batch
    pos = torch.arange(start, start + batch)
    epochs = pos // n
    out = torch.empty(batch, dtype=torch.long)
    for e in epochs.unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, e, 7919, stream)))
        sel = epochs == e
        out[sel] = perm[pos[sel] % n]
    return out


def optimise(
    opt: torch.optim.Optimizer, loss: torch.Tensor, step: int, *, clip: Iterable[nn.Parameter] | None = None, max_norm: float = 0.0
) -> float:
    """One optimiser step on ``loss`` (gradient norm of ``clip`` clipped to ``max_norm`` when given);
    the loss's value, or ``FloatingPointError`` once it is not finite (nothing more is trained)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, max_norm)
    opt.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged at step {step} (loss {value}); lower --lr")
    return value


# ---- checkpoints ------------------------------------------------------------------------------
def jsonable(obj: Any) -> Any:
    """Dataclass-ish config values as JSON types (tuples -> lists, paths -> str)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


@dataclass
class Checkpoint:
    """A loaded checkpoint: call ``restore_*`` to put its state back into live objects."""

    path: Path
    step: int
    meta: dict[str, Any]
    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def restore_module(self, name: str, module: nn.Module) -> None:
        if name not in self.modules:
            raise WeightsError(f"{self.path}: checkpoint has no module {name!r}")
        unwrap(module).load_state_dict(self.modules[name], strict=True)

    def restore_optimizer(self, name: str, optimizer: torch.optim.Optimizer) -> None:
        if name not in self.optimizers:
            raise WeightsError(f"{self.path}: checkpoint has no optimiser {name!r}")
        optimizer.load_state_dict(self.optimizers[name])


def resume_training(
    ck: Checkpoint | None, name: str, module: nn.Module, optimizer: torch.optim.Optimizer, say: LogFn, *, unit: str = "step"
) -> int:
    """Put a resumed run's ``name`` module and optimiser back and say so; the step reached (0: a fresh run)."""
    if ck is None:
        return 0
    ck.restore_module(name, module)
    ck.restore_optimizer(name, optimizer)
    say(f"resumed from {ck.path} at {unit} {ck.step}")
    return ck.step


def _flatten_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{name}/{pid}/{k}"] = v.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return {"param_groups": jsonable(sd["param_groups"]), "scalars": scalars}


def _unflatten_optimizer(name: str, info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim/{name}/"
    for key, v in tensors.items():
        if key.startswith(prefix):
            pid, k = key[len(prefix):].split("/", 1)
            state.setdefault(int(pid), {})[k] = v
    for pid, st in info.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = []
    for g in info["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def optimizer_path(path: Path) -> Path:
    """The optimiser-state file that goes with checkpoint ``path``."""
    return Path(path).with_suffix(".optim.safetensors")


def save_checkpoint(
    path: Path,
    *,
    step: int,
    modules: Mapping[str, nn.Module] = {},
    optimizers: Mapping[str, torch.optim.Optimizer] = {},
    tensors: Mapping[str, torch.Tensor] = {},
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``path`` (safetensors), its optimiser file and ``path.json`` (sidecar), each atomically."""
    path = Path(path)
    flat: dict[str, torch.Tensor] = {}
    for name, mod in modules.items():
        for k, v in unwrap(mod).state_dict().items():
            flat[f"module/{name}/{k}"] = v.detach().cpu().clone().contiguous()
    for name, t in tensors.items():
        flat[f"tensor/{name}"] = t.detach().cpu().clone().contiguous()
    header = {"format": CHECKPOINT_FORMAT, "step": int(step), "meta": jsonable(dict(meta or {}))}
    sidecar: dict[str, Any] = {"step": int(step), "file": path.name}
    if optimizers:
        opt_flat: dict[str, torch.Tensor] = {}
        opt_info = {name: _flatten_optimizer(name, opt, opt_flat) for name, opt in optimizers.items()}
        opt_path = optimizer_path(path)
        opt_header = {"format": CHECKPOINT_FORMAT, "step": int(step), "optimizers": opt_info}
        save_safetensors(opt_flat, opt_path, metadata={"lle": json.dumps(opt_header, sort_keys=True)})
        sidecar.update(optimizer_file=opt_path.name, optimizer_sha256=sha256_file(opt_path))
    save_safetensors(flat, path, metadata={"lle": json.dumps(header, sort_keys=True)})
    sidecar.update(
        sha256=sha256_file(path),
        saved=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        meta=header["meta"],
    )
    _write_json_atomic(path.with_suffix(".json"), sidecar)
    return path


def _lle_header(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get("lle")
    try:
        header = json.loads(raw or "")
        int(header["step"])
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{path}: not an lle training checkpoint (no step metadata)") from e
    return header


def load_checkpoint(path: Path, *, optimizers: bool = True) -> Checkpoint:
    """Read a checkpoint; with ``optimizers`` also its optimiser file (needed to resume)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    side = path.with_suffix(".json")
    sidecar: dict[str, Any] = {}
    if side.is_file():
        try:
            sidecar = json.loads(side.read_text())
        except (OSError, ValueError):
            sidecar = {}
    opt_path = optimizer_path(path)
    checks = [(path, sidecar.get("sha256"))]
    if optimizers:
        if sidecar.get("optimizer_file") and not opt_path.is_file():
            raise InputError(f"{path}: its optimiser state {opt_path.name} is missing; copy it beside the checkpoint to resume")
        checks.append((opt_path, sidecar.get("optimizer_sha256")))
    for f, expected in checks:
        if expected and sha256_file(f) != expected:
            raise WeightsError(f"{f}: sha256 does not match {side.name}; the checkpoint is corrupt, resume from an earlier one")
    header = _lle_header(path)
    ck = Checkpoint(path, int(header["step"]), dict(header.get("meta", {})))
    flat = load_safetensors(path)
    for key, v in flat.items():
        kind, _, rest = key.partition("/")
        if kind == "module":
            name, _, k = rest.partition("/")
            ck.modules.setdefault(name, {})[k] = v
        elif kind == "tensor":
            ck.tensors[rest] = v
    if optimizers:  # format 1 (before the separate file) kept the optimisers in the checkpoint itself
        for name, info in header.get("optimizers", {}).items():
            ck.optimizers[name] = _unflatten_optimizer(name, info, flat)
    if optimizers and opt_path.is_file():
        opt_header = _lle_header(opt_path)
        if int(opt_header["step"]) != ck.step:
            raise WeightsError(f"{opt_path}: optimiser state of step {opt_header['step']}, not {ck.step}; resume from a complete checkpoint")
        opt_flat = load_safetensors(opt_path)
        for name, info in opt_header.get("optimizers", {}).items():
            ck.optimizers[name] = _unflatten_optimizer(name, info, opt_flat)
    return ck


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:08d}.safetensors"


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not Path(directory).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(directory).iterdir() if (m := _CKPT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory: Path) -> Path | None:
    found = _checkpoints(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (and their sidecars); ``keep <= 0`` keeps all."""
    if keep <= 0:
        return
    for _, p in _checkpoints(directory)[:-keep]:
        p.unlink(missing_ok=True)
        optimizer_path(p).unlink(missing_ok=True)
        p.with_suffix(".json").unlink(missing_ok=True)


def resolve_resume(resume: Path) -> Path:
    """A checkpoint file, or the newest checkpoint in a run directory (or its ``checkpoints/``)."""
    resume = Path(resume)
    if resume.is_file():
        return resume
    if resume.is_dir():
        for d in (resume / "checkpoints", resume):
            if (p := latest_checkpoint(d)) is not None:
                return p
        raise InputError(f"{resume}: no checkpoints (step-*.safetensors) in this directory")
    raise InputError(f"{resume}: no such checkpoint or run directory")


def check_run_dir(run_dir: Path, *, resuming: bool) -> None:
    """A fresh run must not mix its checkpoints with those of an earlier run in the same directory."""
    if not resuming and latest_checkpoint(Path(run_dir) / "checkpoints") is not None:
        raise UsageError(
            f"{run_dir}: holds checkpoints of an earlier run; pass --resume {run_dir} to continue it, "
            "or choose another --run-dir (or delete that one)"
        )


def check_resume_config(saved: Mapping[str, Any], current: Mapping[str, Any], *, ignore: Iterable[str] = ()) -> None:
    """Refuse to resume with different hyper-parameters (except those in ``ignore``, e.g. ``steps``)."""
    skip = set(ignore)
    diffs = [k for k in sorted(set(saved) | set(current)) if k not in skip and jsonable(saved.get(k)) != jsonable(current.get(k))]
    if diffs:
        show = ", ".join(f"{k}={jsonable(saved.get(k))!r} (now {jsonable(current.get(k))!r})" for k in diffs[:4])
        raise UsageError(f"the checkpoint was trained with different settings: {show}; pass the same options to resume")


def open_run(
    run_dir: Path, resume: Path | None, *, trainer: str, label: str, config: Mapping[str, Any],
    total_steps: int, ignore: Iterable[str] = (), extend_hint: str = "pass --steps larger than that to train on",
) -> Checkpoint | None:
    """Check the run directory and, when resuming, load and vet the checkpoint (trainer, settings, step)."""
    check_run_dir(run_dir, resuming=resume is not None)
    if resume is None:
        return None
    ck = load_checkpoint(resolve_resume(Path(resume)))
    if ck.meta.get("trainer") != trainer:
        raise UsageError(f"{ck.path}: not a {label} checkpoint (trainer {ck.meta.get('trainer')!r})")
    check_resume_config(ck.meta.get("config", {}), config, ignore=ignore)
    if ck.step >= total_steps:
        raise UsageError(f"{ck.path}: already at step {ck.step} of {total_steps}; {extend_hint}")
    return ck


class RunOptions(TypedDict, total=False):
    """The run control every trainer takes as keyword arguments, the same for all of them.

    ``run_dir``: checkpoints, metrics.jsonl and config (default: the output's name + ``_run``);
    ``resume``: a checkpoint file, or a run directory whose newest checkpoint to continue from;
    ``device``: where to train (default "cpu"); ``progress``: called after each step and ``log``:
    called with one line for the user, both on rank 0 only.
    """

    run_dir: Path | None
    resume: Path | None
    device: str | torch.device
    progress: Callable[..., Any] | None
    log: LogFn | None


def run_distributed(body: Callable[..., Any], output: Path, batch_size: int, run: RunOptions) -> Any:
    """Set up the process group (if under torchrun), call ``body``, and always tear it down.

    ``body`` receives ``output, run_dir, resume, d, dev, local_batch, progress, say``; only rank 0
    reports progress and log lines. ``run`` is what the trainer was given as ``**run`` keywords.
    """
    unknown = sorted(set(run) - set(RunOptions.__annotations__))
    if unknown:  # what a plain keyword-only signature would say for a misspelt option
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}; the run options are {', '.join(RunOptions.__annotations__)}")
    output = Path(output)
    run_dir = Path(run["run_dir"]) if run.get("run_dir") else output.with_name(output.stem + "_run")
    d, dev = init_distributed(torch.device(run.get("device") or "cpu"))
    log, progress = run.get("log"), run.get("progress")
    say = log if (log and d.is_main) else (lambda _m: None)
    try:
        if batch_size % d.world_size:
            raise UsageError(f"--batch-size {batch_size} is not divisible by the {d.world_size} processes")
        return body(output, run_dir, run.get("resume"), d, dev, batch_size // d.world_size, progress if d.is_main else None, say)
    finally:
        shutdown_distributed(d)


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class MetricsLog:
    """Append-only JSON-lines log of training metrics (rank 0 only; a no-op elsewhere)."""

    def __init__(self, path: Path, *, enabled: bool = True, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    if int(json.loads(line).get("step", 0)) <= resume_step:
                        kept.append(line)
                except (ValueError, AttributeError):
                    continue
        write_text_atomic(self.path, "".join(x + "\n" for x in kept))
        self._t0 = time.perf_counter()

    def write(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "time": round(time.perf_counter() - self._t0, 3)}
        for k, v in values.items():
            if isinstance(v, float) and not np.isfinite(v):
                v = None  # JSON has no NaN/Inf
            row[k] = jsonable(v)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def save_trained_weights(state: Mapping[str, torch.Tensor], path: Path, *, family: str, recipe: Mapping[str, Any]) -> None:
    """The final weights, loadable by ``lle enhance --weights``; the recipe goes in the ``lle`` key."""
    clean = {k: v.detach().cpu().float().contiguous() for k, v in state.items()}
    for k, v in clean.items():
        if not torch.isfinite(v).all():
            raise FloatingPointError(f"training produced non-finite weights ({k}); nothing was written; lower --lr")
    meta = {"family": family, "training": jsonable(dict(recipe))}
    save_safetensors(clean, Path(path), metadata={"lle": json.dumps(meta, sort_keys=True)})


# ---- data ---------------------------------------------------------------------------------------
def read_rgb(path: Path):
    """An upright 8-bit RGB PIL image, read as ``lle enhance`` reads photos (every format it takes)."""
    from PIL import Image

    from ..imageio import read_rgb8

    return Image.fromarray(read_rgb8(path))


def load_images_resized(paths: Sequence[Path], size: int) -> torch.Tensor:
    """Images squash-resized to ``size`` x ``size`` (as the authors' loaders), uint8 (N, 3, S, S)."""
    from PIL import Image

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, p in enumerate(paths):
        im = read_rgb(p).resize((size, size), Image.Resampling.LANCZOS)
        out[i] = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


def augment_batch(
    x: torch.Tensor,
    g: torch.Generator,
    *,
    zoom: tuple[float, float] = (0.7, 1.3),
    p_zoom: float = 0.3,
    p_rotate: float = 0.3,
    max_angle: float = 90.0,
) -> torch.Tensor:
    """The CLIP-LIT/RAVE augmentations, per image: horizontal and vertical flips and a transpose (each
    with p=0.5), an anisotropic zoom in ``zoom`` (p=0.3) and a rotation in +-``max_angle`` degrees
    (p=0.3), the last two with reflected borders. Square images in, same shape out."""
    b = x.shape[0]
    r = torch.rand(b, 5, generator=g)
    zxy = zoom[0] + (zoom[1] - zoom[0]) * torch.rand(b, 2, generator=g)
    ang = (torch.rand(b, generator=g) * 2 - 1) * max_angle
    out = []
    for i in range(b):
        im = x[i]
        if r[i, 0] < 0.5:
            im = im.flip(-1)
        if r[i, 1] < 0.5:
            im = im.flip(-2)
        if r[i, 2] < 0.5:
            im = im.transpose(-1, -2)
        zoomed, rotated = bool(r[i, 3] < p_zoom), bool(r[i, 4] < p_rotate)
        if zoomed or rotated:
            theta = torch.eye(2, 3, dtype=x.dtype)
            if zoomed:  # sample the source at 1/zoom: zoom > 1 magnifies
                theta[0, 0], theta[1, 1] = 1.0 / zxy[i, 0], 1.0 / zxy[i, 1]
            if rotated:
                a = torch.deg2rad(ang[i]).to(x.dtype)
                rot = torch.tensor([[torch.cos(a), -torch.sin(a)], [torch.sin(a), torch.cos(a)]], dtype=x.dtype)
                theta[:, :2] = rot @ theta[:, :2]
            grid = F.affine_grid(theta.unsqueeze(0).to(x.device), [1, *im.shape], align_corners=False)
            im = F.grid_sample(im.unsqueeze(0), grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
        out.append(im)
    return torch.stack(out)
