"""``--ray [local|auto|ADDRESS]``: a batch on Ray actors, one model per actor (the ``ray`` extra).

The driver (the ``lle`` process) plans the batch, resolves and verifies the weights once, and
writes the run record; each actor loads the model once (from the file the driver verified, or
the embedded weights) and runs images by path through lle's own reader and atomic writers, so an
output is byte-identical to a local run's and nothing but paths and small result records crosses
Ray's object store. The file system must therefore be shared by the driver and every node.

Cluster: ``local`` starts a private single-machine cluster for the run (always a new one: ``ray
stop`` can leave a stale address behind that ``auto`` would follow) in its own temporary folder,
and stops it and removes that folder afterwards; ``auto`` joins the cluster ``ray start`` made on
this machine (or ``RAY_ADDRESS``); anything else is an address to join. A cluster that has GPUs
gets one actor per GPU.

Traps this avoids (measured here): the read and write work is done inside the actor's own call,
so there are no separate I/O tasks that could wait forever for a CPU the actors hold; a watchdog
still turns a cluster that cannot place the actors, or that stops returning results, into an
error instead of a hang. Usage statistics are off (``RAY_USAGE_STATS_ENABLED=0``). The object
store of a local cluster is small (results are a few hundred bytes each), so the whole run stays
within a few GB. Ray's services listen on the machine's interfaces: tests and benchmarks run them
in a loopback-only network namespace.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ._threads import available_cpus
from .errors import LLEError
from .worker_tasks import worker_tile_budget

__all__ = ["OBJECT_STORE_MB", "WATCHDOG_ENV", "cluster", "require_ray", "run_on_ray"]

WATCHDOG_ENV = "LLE_RAY_WATCHDOG_S"  # seconds without any finished image (or actor start) before giving up
_WATCHDOG_S = 600.0
OBJECT_STORE_MB = 128  # a local cluster's shared memory: paths and result records only (Ray's minimum is 75)
_IN_FLIGHT = 2  # images queued per actor: the next path is there when one finishes, no more (back-pressure)
_CANCEL_GRACE_S = 10.0


class RayError(LLEError):
    """The Ray cluster could not run the batch (cannot start or join it, cannot place the actors, stalled)."""


def require_ray():
    """The ``ray`` module, or ``MissingExtraError`` (exit 2) naming the ``ray`` extra."""
    from .extras import require_extra  # the one message for every missing extra

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before ray is imported: it reads this once
    return require_extra("ray", "ray", "--ray")


def _watchdog_s() -> float:
    try:
        return max(1.0, float(os.environ.get(WATCHDOG_ENV, _WATCHDOG_S)))
    except ValueError:
        return _WATCHDOG_S


@contextmanager
def cluster(address: str, *, cpus: int | None = None) -> Iterator[Any]:
    """Ray, started or joined for the ``with`` block; a cluster started here is stopped here."""
    ray = require_ray()
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # Ray's C++ warnings would flood lle's stderr
    started = address == "local"
    temp = tempfile.mkdtemp(prefix="lle-ray-", dir="/tmp") if started else None  # short: Ray's socket paths are length-limited
    try:
        with _stderr_to_log():
            if started:
                ray.init(
                    address="local", num_cpus=cpus, object_store_memory=OBJECT_STORE_MB << 20, include_dashboard=False,
                    _temp_dir=temp, _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False,
                    # idle workers prestarted for tasks would only hold memory: lle runs actors, not tasks
                    # Ray's memory monitor judges the whole machine's memory and kills actors when other
                # jobs fill it; lle bounds its own memory (tile budgets per worker) and the kernel's
                # OOM killer remains for the rest
                _system_config={"enable_worker_prestart": False, "memory_monitor_refresh_ms": 0},
                )
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError, ...
        _remove(temp)
        how = "start a local Ray cluster" if started else f"join the Ray cluster at {address}"
        hint = "" if started else " (is `ray start` running there? a token-protected cluster needs RAY_AUTH_MODE / its token)"
        raise RayError(f"--ray {address}: could not {how}: {str(e).splitlines()[0] if str(e) else type(e).__name__}{hint}") from None
    try:
        yield ray
    finally:
        with _stderr_to_log():
            ray.shutdown()  # a local cluster's processes stop with it; a joined one only loses this driver
        _remove(temp)


def _remove(temp: str | None) -> None:
    """Remove a local cluster's folder; its services may still be closing their logs for a moment."""
    if not temp:
        return
    for _ in range(20):
        shutil.rmtree(temp, ignore_errors=True)
        if not os.path.exists(temp):
            return
        time.sleep(0.25)


@contextmanager
def _stderr_to_log() -> Iterator[None]:
    """Ray's start-up and shut-down chatter (its C++ core writes straight to file descriptors 1 and
    2, before any log level applies) goes to a file, not into lle's stdout (``--json`` lines) or
    stderr; shown only with LLE_RAY_VERBOSE=1."""
    if os.environ.get("LLE_RAY_VERBOSE") == "1":
        yield
        return
    import sys

    saved: dict[int, int] = {}
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            saved[fd] = os.dup(fd)
    except (OSError, ValueError):  # no real descriptors (embedded, captured): nothing to hide
        for dup in saved.values():
            os.close(dup)
        yield
        return
    with tempfile.TemporaryFile() as log:
        for fd in saved:
            os.dup2(log.fileno(), fd)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            for fd, dup in saved.items():
                os.dup2(dup, fd)
                os.close(dup)


class _Worker:
    """One actor: one model, loaded once; runs a task per path."""

    def __init__(self, spec: Any, task: Callable, threads: int, device: str | None, tile_mb: int | None = None) -> None:
        from ._cpu import keep_freed_memory
        from .worker_tasks import apply_tile_budget, set_threads

        set_threads(threads)
        apply_tile_budget(tile_mb)
        keep_freed_memory()
        self.model = spec.load(device)
        self.task = task

    def ready(self) -> str:
        return self.model.name

    def run(self, idx: int, item: Any) -> tuple[int, Any]:
        try:
            return idx, self.task(self.model, item)
        except Exception as e:  # noqa: BLE001 - a bug on one image: report it, go on
            from .worker_tasks import unexpected_error

            return idx, self.task.failed(item, self.model.name, unexpected_error(item, e))


def _message(e: BaseException) -> str:
    """The first line of a Ray error's cause (an actor's traceback would be dozens of lines)."""
    cause = getattr(e, "cause", None) or e
    text = str(cause).strip().splitlines()
    lines = [ln for ln in text if ln.strip() and not ln.startswith((" ", "Traceback"))]
    return (lines[-1] if lines else type(cause).__name__)[:500]


def run_on_ray(parallel: Any, spec: Any, task: Callable, items: Sequence[Any], *, model_name: str) -> Iterator[tuple[int, Any]]:
    """``(index, result)`` for each item as an actor finishes it."""
    if not items:
        return
    threads = parallel.threads or 1
    local = parallel.ray == "local"
    # a local cluster gets exactly the CPUs its actors need (default: every core, one actor per thread group)
    workers = (parallel.workers or max(1, available_cpus() // threads)) if local else parallel.workers
    with cluster(parallel.ray, cpus=(workers or 1) * threads if local else None) as ray:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        use_gpu = gpus > 0 and not spec.device.startswith("cpu")
        if workers is None:
            workers = gpus if use_gpu else max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        workers = min(workers, len(items))
        remote = ray.remote(_Worker)
        actor_opts: dict[str, Any] = {"num_cpus": threads, "max_restarts": 1, "max_task_retries": 1}
        device = None
        if use_gpu:
            actor_opts["num_gpus"] = 1
            device = "cuda"  # Ray makes the actor's own GPU its cuda:0
        # actors sharing one machine share its memory (lle_cli.worker_tasks.worker_tile_budget); one per GPU need not
        tile_mb = None if use_gpu or not local else worker_tile_budget(workers)
        actors = [remote.options(**actor_opts).remote(spec, task, threads, device, tile_mb) for _ in range(workers)]
        try:
            yield from _dispatch(ray, actors, task, items, model_name, threads)
        finally:
            for a in actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - already gone
                    pass


def _dispatch(ray, actors, task, items, model_name: str, threads: int) -> Iterator[tuple[int, Any]]:
    watchdog = _watchdog_s()
    ready = [a.ready.remote() for a in actors]
    done, _ = ray.wait(ready, num_returns=len(ready), timeout=watchdog)
    if len(done) < len(ready):
        have = ray.available_resources().get("CPU", 0)
        raise RayError(f"Ray placed {len(done)} of {len(actors)} actors ({threads} CPU each) within {watchdog:g} s "
                       f"({have:g} CPUs free); lower --workers or --threads-per-worker, or raise {WATCHDOG_ENV}")
    for ref in done:
        try:
            ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the actor could not load the model
            raise RayError(f"a Ray actor could not load the model: {_message(e)}") from None
    queue = list(enumerate(items))
    queue.reverse()  # pop() from the end takes them in order
    in_flight: dict[Any, tuple[int, Any]] = {}  # ref -> (index, actor)
    alive = list(actors)

    def submit(actor) -> None:
        if queue:
            idx, item = queue.pop()
            in_flight[actor.run.remote(idx, item)] = (idx, actor)

    for actor in alive:
        for _ in range(_IN_FLIGHT):
            submit(actor)
    try:
        while in_flight:
            finished, _ = ray.wait(list(in_flight), num_returns=1, timeout=watchdog)
            if not finished:
                raise RayError(f"no image finished on the Ray cluster for {watchdog:g} s; stopping "
                               f"(raise {WATCHDOG_ENV} for images that take longer)")
            ref = finished[0]
            idx, actor = in_flight.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the actor died under this image (and after its retry)
                yield idx, task.failed(items[idx], model_name, f"{getattr(items[idx], 'input', items[idx])}: "
                                                                f"the Ray actor failed: {_message(e)}")
                if _dead(ray, actor):
                    alive.remove(actor) if actor in alive else None
            if actor in alive:
                submit(actor)
            elif alive:
                submit(alive[0])
            if not alive and not in_flight:
                for idx, item in reversed(queue):
                    yield idx, task.failed(item, model_name, f"{getattr(item, 'input', item)}: no Ray actor left to run it")
                queue.clear()
    except KeyboardInterrupt:
        # Ctrl-C: queued images are dropped, running ones are interrupted (an actor's atomic
        # writer removes its temp file); what finished meanwhile is still reported
        for ref in in_flight:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001
                pass
        deadline = time.monotonic() + _CANCEL_GRACE_S
        while in_flight and time.monotonic() < deadline:
            finished, _ = ray.wait(list(in_flight), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not finished:
                break
            in_flight.pop(finished[0])
            try:
                yield ray.get(finished[0])
            except Exception:  # noqa: BLE001 - cancelled
                pass
        raise


def _dead(ray, actor) -> bool:
    try:
        ray.get(actor.ready.remote(), timeout=30)
    except Exception:  # noqa: BLE001
        return True
    return False
