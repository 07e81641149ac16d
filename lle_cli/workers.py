"""Past one process on one machine: ``--workers N`` runs a batch on a pool of processes, each with its
own copy of the model and its own torch threads (``--ray`` hands the same work to Ray actors:
``lle_cli.ray_backend``).

Paths travel, never pixels: a worker reads, enhances and writes each image with lle's own I/O and
atomic writers (``batch.run_job``, ``sampling.run_sample_job``), so EXIF, ICC, 16-bit and
whole-or-nothing writes are exactly those of a local run, and nothing large crosses a pipe. The
parent plans the batch (outputs, ``--skip-existing``, clashes) before any worker starts, loads the
model once to resolve and verify its weights, and writes the run record from the results.

Why processes: a small model's forward pass on a CPU does not scale across threads as well as
separate processes do (oneDNN's per-layer thread fork/join, Python glue between layers, the decode
and encode around it); two one-thread workers keep two cores busier than one two-thread process.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ._threads import available_cpus
from .errors import LLEError, UsageError, WeightsError
from .worker_tasks import (
    EnhanceTask,
    ModelSpec,
    SampleTask,
    apply_tile_budget,
    set_threads,
    unexpected_error,
    worker_tile_budget,
)

__all__ = [
    "EnhanceTask",
    "ModelSpec",
    "ParallelSpec",
    "SampleTask",
    "check_parallel",
    "process_pool",
    "run_batch_parallel",
    "run_parallel",
    "run_samples_parallel",
]

# how long the parent waits for a worker to finish its image after Ctrl-C before stopping it
_STOP_GRACE_S = 10.0
_POLL_S = 0.5


@dataclass(frozen=True)
class ParallelSpec:
    """How a batch runs past one process: ``workers`` processes or actors of ``threads`` torch threads each."""

    workers: int | None = None  # None: as many as the cores (or the Ray cluster's CPUs, or GPUs) allow
    threads: int | None = None  # torch threads per worker; None: the cores shared out among the workers
    ray: str | None = None  # None: a local process pool; "local", "auto" or a cluster address

    def pool_size(self) -> tuple[int, int]:
        """(workers, threads) for a local process pool."""
        cores = available_cpus()
        workers = self.workers or max(1, cores // (self.threads or 1))
        threads = self.threads or max(1, cores // workers)
        return workers, threads


def check_parallel(workers: int | None, threads: int | None, ray: str | None) -> ParallelSpec | None:
    """The options' ``ParallelSpec`` (None: a plain in-process run), or ``UsageError`` before any work.

    ``--ray`` without the ``ray`` package is a ``MissingExtraError`` (exit 2) naming the extra.
    """
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: give 1 or more")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads-per-worker {threads}: give 1 or more")
    if ray is not None:
        from .ray_backend import require_ray

        if not ray.strip():
            raise UsageError("--ray: give local (a private cluster for this run), auto (the cluster on this machine) or an address")
        require_ray()
        return ParallelSpec(workers, threads, ray.strip())
    if workers is None and threads is None:
        return None
    if threads is not None and workers is None:
        raise UsageError("--threads-per-worker needs --workers N (or --ray)")
    return ParallelSpec(workers, threads, None)


# ---- a local process pool ---------------------------------------------------------------------------


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _pool_worker(wid: int, spec: ModelSpec, task: Callable, threads: int, tasks, results, tile_mb: int | None = None) -> None:
    """A worker: load the model once, then run items until the parent's sentinel (None)."""
    # Ctrl-C in a terminal reaches every process of the group: it is the parent's to handle. The
    # parent stops a worker with SIGTERM, raised here as KeyboardInterrupt so that an image being
    # written is abandoned the way a local Ctrl-C abandons it (the atomic writer removes its temp file).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        set_threads(threads)
        apply_tile_budget(tile_mb)
        from ._cpu import keep_freed_memory

        keep_freed_memory()
        model = spec.load()
    except KeyboardInterrupt:
        return
    except Exception as e:  # noqa: BLE001 - the parent reports it and stops the batch
        results.put(("failed", wid, str(e) if isinstance(e, LLEError) else f"{type(e).__name__}: {e}"))
        return
    results.put(("ready", wid, None))
    try:
        while True:
            item = tasks.get()
            if item is None:
                return
            idx, payload = item
            results.put(("start", wid, idx))
            try:
                out = task(model, payload)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - a bug on one image: report it, go on with the next
                out = task.failed(payload, model.name, unexpected_error(payload, e))
            results.put(("done", wid, (idx, out)))
    except KeyboardInterrupt:
        return


class _IgnoreSigint:
    """SIGINT ignored while workers are spawned: an ignored signal stays ignored across exec, so a
    Ctrl-C while a worker is still importing torch cannot print a traceback from it."""

    def __enter__(self) -> None:
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc) -> None:
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def process_pool(spec: ModelSpec, task: Callable, items: Sequence[Any], *, workers: int, threads: int,
                 model_name: str) -> Iterator[tuple[int, Any]]:
    """Run ``task(model, item)`` for every item on ``workers`` spawned processes; yields
    ``(index, result)`` as each finishes. A worker that dies (out of memory, a crash in native
    code) fails its image and another takes its place; Ctrl-C stops the workers, reports what
    finished, and re-raises."""
    import multiprocessing as mp

    if not items:
        return
    ctx = mp.get_context("spawn")  # fork would copy a parent's torch threads and locks
    tasks, results = ctx.Queue(), ctx.Queue()
    workers = min(workers, len(items))
    tile_mb = worker_tile_budget(workers)
    for i, item in enumerate(items):
        tasks.put((i, item))
    for _ in range(workers):
        tasks.put(None)
    procs: dict[int, Any] = {}
    running: dict[int, int] = {}  # worker -> the index it is on
    pending = set(range(len(items)))
    next_id = 0

    def start() -> None:
        nonlocal next_id
        env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        os.environ.update({k: str(threads) for k in env})  # read by the child's OpenMP when it starts
        try:
            with _IgnoreSigint():
                p = ctx.Process(target=_pool_worker, args=(next_id, spec, task, threads, tasks, results, tile_mb),
                                name=f"lle-worker-{next_id}", daemon=True)
                p.start()
        finally:
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        procs[next_id] = p
        next_id += 1

    def handle(msg) -> tuple[int, Any] | None:
        kind, wid, data = msg
        if kind == "failed":
            raise WeightsError(f"a worker could not load the model: {data}")
        if kind == "start":
            running[wid] = data
        elif kind == "done":
            idx, out = data
            running.pop(wid, None)
            if idx in pending:
                pending.discard(idx)
                return idx, out
        return None

    def drain() -> Iterator[tuple[int, Any]]:
        while True:
            try:
                msg = results.get_nowait()
            except queue.Empty:
                return
            got = handle(msg)
            if got is not None:
                yield got

    try:
        for _ in range(workers):
            start()
        while pending:
            try:
                msg = results.get(timeout=_POLL_S)
            except queue.Empty:
                yield from _reap(procs, running, pending, drain, start, task, items, model_name)
                continue
            got = handle(msg)
            if got is not None:
                yield got
    except KeyboardInterrupt:
        for p in procs.values():
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker abandons its image (see _pool_worker)
        for p in procs.values():
            p.join(_STOP_GRACE_S)
        yield from drain()  # images that finished before the workers stopped are reported
        raise
    finally:
        for p in procs.values():
            if p.is_alive():
                p.kill()
            p.join(1.0)
        for q in (tasks, results):
            q.cancel_join_thread()  # undelivered paths need not be flushed to workers that are gone
            q.close()


def _reap(procs, running, pending, drain, start, task, items, model_name) -> Iterator[tuple[int, Any]]:
    """Fail the image of each worker that died, start another in its place; fail what nobody can run."""
    dead = [wid for wid, p in procs.items() if not p.is_alive() and p.exitcode != 0]
    if not dead and any(p.is_alive() for p in procs.values()):
        return
    yield from drain()  # what the dead workers sent before dying
    for wid in dead:
        p = procs.pop(wid)
        idx = running.pop(wid, None)
        if idx is not None and idx in pending:
            pending.discard(idx)
            yield idx, task.failed(items[idx], model_name, unexpected_error(
                items[idx], RuntimeError(f"the worker process died (exit code {p.exitcode}; out of memory?)")))
        if len(pending) > len(running):  # images still queued: a new worker takes the dead one's place
            start()
    if pending and not any(p.is_alive() for p in procs.values()):
        # every worker has exited, yet images are unaccounted for (a worker died between taking an
        # image and saying so): they are failed rather than waited for forever
        for idx in sorted(pending):
            yield idx, task.failed(items[idx], model_name, unexpected_error(items[idx], RuntimeError("lost with a worker that exited")))
        pending.clear()


# ---- the entry points the CLI uses ------------------------------------------------------------------


def run_parallel(parallel: ParallelSpec, model: Any, task: Callable, items: Sequence[Any], *,
                 tile: int | None = None) -> Iterator[tuple[int, Any]]:
    """``(index, result)`` for each item as it finishes, on a process pool or a Ray cluster."""
    spec = ModelSpec.of(model, tile)
    if parallel.ray is not None:
        from .ray_backend import run_on_ray

        yield from run_on_ray(parallel, spec, task, items, model_name=model.name)
        return
    workers, threads = parallel.pool_size()
    yield from process_pool(spec, task, items, workers=workers, threads=threads, model_name=model.name)


def _refuse_stdio(paths: Sequence[str]) -> None:
    if "-" in paths:
        raise UsageError("--workers and --ray read and write files; stdin and stdout (-) take one image: leave them out")


def run_batch_parallel(parallel: ParallelSpec, model: Any, jobs: Sequence[Any], opts: Any, *, digests: bool = False,
                       tile: int | None = None) -> Iterator[Any]:
    """``batch.run_batch`` past one process: one ``JobResult`` per job, in the order they finish.

    Skipped jobs (``--skip-existing``) and jobs that failed planning are answered at once, here;
    the rest go to the workers.
    """
    from .batch import JobResult

    _refuse_stdio([j.input for j in jobs] + [j.output or "" for j in jobs])
    work = []
    for job in jobs:
        if job.skip is not None:
            yield JobResult(job.input, job.output, model.name, 0.0, "skipped", None)
        elif job.error is not None:
            yield JobResult(job.input, job.output, model.name, 0.0, "error", job.error)
        else:
            work.append(job)
    for _, result in run_parallel(parallel, model, EnhanceTask(opts, digests), work, tile=tile):
        yield result


def run_samples_parallel(parallel: ParallelSpec, model: Any, paths: Sequence[str], out_dir: str | None, opts: Any, *,
                         tile: int | None = None) -> Iterator[tuple[str, Any]]:
    """``sampling.run_sample_job`` for each path past one process: ``(path, SampleJobResult)`` as each finishes."""
    _refuse_stdio(paths)
    for idx, result in run_parallel(parallel, model, SampleTask(out_dir, opts), list(paths), tile=tile):
        yield paths[idx], result
