"""Run the runs of a bench grid in several worker processes (``mdmt bench --jobs N``).

A grid of many small runs uses a multi-core machine best with one run per core: the step of a
ranking model is too small for several threads to speed it up much, while several processes that
each use every core spin-wait on each other's cores and slow everything down. So each worker is a
process of its own, pinned to its own share of this process's CPUs (``os.sched_setaffinity``) and
training with as many threads as that share has.

The parent keeps the order of the grid and its dependencies: it hands a run to a worker only once
the run it warm-starts from (``BenchEntry.warm_start``) has finished, and at most ``jobs`` runs are
in flight. Each worker writes its finished run's record itself (the same atomic cell file as the
serial path), so an interrupted grid resumes as usual. The first failed run stops new runs from
starting; the runs already in flight finish and are kept, and the error is raised in the parent
with the worker's traceback attached as a note.

Example (on a machine with at least 2 CPUs)::

    >>> from mdmt.bench.parallel import cpu_groups
    >>> len(cpu_groups(1)) == 1
    True
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..schema import ConfigError

if TYPE_CHECKING:
    from .harness import BenchConfig, CellKey

__all__ = ["cpu_groups", "model_modules", "run_parallel", "BenchWorkerError"]

_POLL_SECONDS = 2.0


class BenchWorkerError(RuntimeError):
    """A worker process ended without reporting its run (killed, out of memory, crashed)."""


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux: no affinity, the CPUs are numbered only for counting
        return list(range(os.cpu_count() or 1))


def cpu_groups(jobs: int) -> list[list[int]]:
    """Split this process's CPUs into ``jobs`` disjoint, contiguous groups of (nearly) equal size.

    Raises:
        ConfigError: ``jobs`` is below 1 or above the CPUs this process may use (its affinity,
            capped by a cgroup CPU quota: :func:`mdmt.train.run.available_cpus`).
    """
    from ..train.run import available_cpus

    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    cpus = _allowed_cpus()[: available_cpus()]
    if jobs > len(cpus):
        raise ConfigError(
            f"--jobs {jobs} asks for more worker processes than the {len(cpus)} CPU(s) this process may use; "
            f"use --jobs {len(cpus)} or fewer"
        )
    n = len(cpus)
    return [cpus[i * n // jobs:(i + 1) * n // jobs] for i in range(jobs)]


def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling (to cross to the parent), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def model_modules(cfg: "BenchConfig") -> list[str]:
    """The modules outside ``mdmt`` that register the grid's models: a worker is a fresh process
    and imports them before its first run.

    Raises:
        ConfigError: a model is registered in ``__main__`` (a script or a notebook), which a fresh
            process cannot import.
    """
    from ..models.base import REGISTRY

    mods: list[str] = []
    for e in cfg.entries:
        info = REGISTRY.get(e.model)
        mod = info.cls.__module__ if info is not None else "mdmt"
        if mod == "__main__":
            raise ConfigError(
                f"bench {cfg.name!r}, entry {e.label!r}: model {e.model!r} is registered in __main__, which the "
                "worker processes of jobs > 1 cannot import; register it in a module of its own, or use jobs=1"
            )
        if mod.split(".")[0] != "mdmt" and mod not in mods:
            mods.append(mod)
    return mods


def _worker(cfg: "BenchConfig", data_dir: str | None, cpus: list[int], tasks: Any, results: Any,
            modules: Sequence[str] = ()) -> None:
    """Body of one worker process: pin to ``cpus``, import ``modules`` (the grid's models registered
    outside ``mdmt``), then train the runs it is handed until ``None``."""
    import importlib

    import torch

    from .. import models  # noqa: F401  (importing registers the models)
    from .harness import machine_description, train_cell

    try:
        for mod in modules:
            importlib.import_module(mod)
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)
        torch.set_num_threads(len(cpus))
        machine = machine_description()
        prepared: dict[str, Any] = {}
        while True:
            key = tasks.get()
            if key is None:
                return
            try:
                rec = train_cell(cfg, key, data_dir, prepared, machine, num_threads=len(cpus))
            except Exception as err:  # reported to the parent, which decides to stop
                results.put(("error", key, (_portable(err), traceback.format_exc())))
            else:
                results.put(("ok", key, rec))
    except KeyboardInterrupt:  # the parent handles the interrupt and ends the workers
        return


def run_parallel(
    cfg: "BenchConfig",
    keys: Sequence["CellKey"],
    jobs: int,
    data_dir: str | None,
    *,
    ready: Callable[["CellKey", set["CellKey"]], bool],
    on_start: Callable[["CellKey"], None] | None = None,
    on_done: Callable[["CellKey", dict[str, Any]], None] | None = None,
) -> None:
    """Train ``keys`` in ``jobs`` worker processes, each pinned to its own CPUs.

    Args:
        cfg: the grid.
        keys: the runs to train, in the order to start them (a warm-start source before its runs).
        jobs: number of worker processes (:func:`cpu_groups` checks it).
        data_dir: root of the real data sets, passed to the loaders.
        ready: ``ready(key, finished)`` says whether ``key`` may start, given the runs of ``keys``
            finished so far in this call (e.g. its warm-start source has weights).
        on_start: called in the parent when a run is handed to a worker.
        on_done: called in the parent with each finished run's record (already written to its cell file).

    Raises:
        The first failed run's exception (with the worker's traceback as a note), after the runs in
        flight finished; :class:`BenchWorkerError` if a worker process died without reporting.
    """
    groups = cpu_groups(jobs)
    modules = model_modules(cfg)
    if not keys:
        return
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(cfg, data_dir, g, tasks, results, modules), daemon=True) for g in groups]
    for p in procs:
        p.start()
    pending = list(keys)
    in_flight: set[CellKey] = set()
    finished: set[CellKey] = set()
    failure: tuple[CellKey, BaseException, str] | None = None
    try:
        while pending or in_flight:
            while failure is None and len(in_flight) < len(procs):
                key = next((k for k in pending if ready(k, finished)), None)
                if key is None:
                    break
                pending.remove(key)
                in_flight.add(key)
                tasks.put(key)
                if on_start is not None:
                    on_start(key)
            if not in_flight:
                if failure is not None:
                    break
                raise RuntimeError(f"bench {cfg.name!r}: no run can start: {[k.name for k in pending]}")
            try:
                kind, key, payload = results.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                dead = [p for p in procs if not p.is_alive()]
                if dead:
                    raise BenchWorkerError(
                        f"bench {cfg.name!r}: a worker process ended (exit code {dead[0].exitcode}) while running "
                        f"{', '.join(sorted(k.name for k in in_flight))}; finished runs are kept, run the bench again "
                        "to resume"
                    ) from None
                continue
            in_flight.discard(key)
            if kind == "ok":
                finished.add(key)
                if on_done is not None:
                    on_done(key, payload)
            elif failure is None:
                err, tb = payload
                failure = (key, err, tb)
    finally:
        for _ in procs:
            tasks.put(None)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    if failure is not None:
        key, err, tb = failure
        err.add_note(f"in bench run {key.name} (worker process):\n{tb}")
        raise err
