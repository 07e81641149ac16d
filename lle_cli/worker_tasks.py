"""What runs inside a worker, whatever the engine (lle_cli.workers' process pool or lle_cli.ray_backend's
actors): the model a worker loads, its share of the memory budget and threads, and the per-item tasks
of ``lle enhance`` and ``lle sample``. Both engines import this module; neither imports the other's
internals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelSpec", "EnhanceTask", "SampleTask", "worker_tile_budget", "apply_tile_budget", "set_threads",
           "unexpected_error"]


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load the model the parent loaded: by name, from the file the parent read."""

    name: str
    weights: str | None  # the file the parent verified and loaded; None: the embedded weights
    device: str
    precision: str
    tile: int | None

    @classmethod
    def of(cls, model: Any, tile: int | None) -> ModelSpec:
        source = model.weights_source
        dtype = str(model.dtype).removeprefix("torch.")
        precision = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(dtype, "auto")
        return cls(model.entry.name, None if source == "embedded" else source, str(model.device), precision, tile)

    def load(self, device: str | None = None):
        from .api import load_model

        # offline: the parent has fetched and verified the weights already; a worker never downloads
        return load_model(self.name, weights=self.weights, device=device or self.device, precision=self.precision,
                          offline=True, tile=self.tile)


def worker_tile_budget(workers: int) -> int | None:
    """MiB of activations per worker (``LLE_TILE_MEMORY_MB``) when several share the machine, or None.

    The automatic tile budget plans one process within ``process_memory_target()`` (half the
    available memory, at least 2.5 GiB, or ``LLE_MEMORY_MB``); N workers each planning for that would
    need N times as much. Each gets the activation share of that one process divided among them (at
    least 512 MiB). A user's own ``LLE_TILE_MEMORY_MB`` or ``--tile N`` wins. A large image may then
    run in more tiles than in one process, which changes its output by float rounding (``--tile N``
    fixes the grid).
    """
    from .memory import RUNTIME_MB, process_memory_target
    from .runner import TILE_MEMORY_ENV

    if workers <= 1 or os.environ.get(TILE_MEMORY_ENV, "").strip():
        return None
    return max(512, int(process_memory_target() - RUNTIME_MB) // workers - 256)



def apply_tile_budget(mb: int | None) -> None:
    if mb is not None:
        from .runner import TILE_MEMORY_ENV

        os.environ[TILE_MEMORY_ENV] = str(mb)  # read by the tile planner for every image


def set_threads(threads: int) -> None:
    """Torch's intra-op threads for this process, so that workers do not oversubscribe the cores."""
    import torch

    torch.set_num_threads(threads)


@dataclass(frozen=True)
class EnhanceTask:
    """``lle enhance``'s work for one ``batch.Job`` in a worker."""

    opts: Any  # batch.OutputOptions
    digests: bool

    def __call__(self, model: Any, job: Any) -> Any:
        from .batch import run_job

        return run_job(model, job, self.opts, digests=self.digests)

    def failed(self, job: Any, model_name: str, message: str) -> Any:
        from .batch import JobResult

        return JobResult(job.input, job.output, model_name, 0.0, "error", message)


@dataclass(frozen=True)
class SampleTask:
    """``lle sample``'s work for one input path in a worker."""

    out_dir: str | None
    opts: Any  # sampling.SampleOptions

    def __call__(self, model: Any, path: str) -> Any:
        from .sampling import run_sample_job

        return run_sample_job(model, path, self.out_dir, self.opts)

    def failed(self, path: str, model_name: str, message: str) -> Any:
        from .sampling import SampleJobResult

        return SampleJobResult(input=path, model=model_name, status="error", error=message)


def unexpected_error(item: Any, e: BaseException) -> str:
    """The one line for an exception lle did not expect, naming the input it happened on."""
    where = getattr(item, "input", item)
    return f"{where}: {type(e).__name__}: {e}"
