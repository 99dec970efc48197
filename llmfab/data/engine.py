"""Engines: run one worker function over a stream of Arrow batches, results in input order.

``local`` uses a process pool (spawned workers, so no inherited locks or threads) with a bounded
window of batches in flight, so memory stays flat however long the stream; one worker runs
in-process. ``ray`` hands windows of batches to Ray Data ``map_batches`` on a cluster
(``spec.engine.ray.address``) or on a small local Ray it starts. Either way results come back in
input order and the worker functions are deterministic, so the output does not depend on the
engine or the worker count (tests compare shard hashes).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from llmfab.api.dataset import Engine
from llmfab.errors import WorkloadError

BatchFn = Callable[[pa.Table], pa.Table]


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _as_table(batch: pa.Table | pa.RecordBatch) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])


class LocalEngine:
    """Multiprocessing engine (``spec.engine.type: local``)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: BatchFn, batches: Iterable[pa.Table | pa.RecordBatch]) -> Iterator[pa.Table]:
        it = iter(batches)
        first = next(it, None)
        if first is None:
            return
        second = next(it, None)
        if self.workers == 1 or (second is None and self._pool is None):
            # one batch: starting processes (~2 s each: imports, language model) would cost more
            for b in itertools.chain([first], [] if second is None else [second], it):
                yield fn(_as_table(b))
            return
        it = itertools.chain([first, second], it)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        window: collections.deque[Future[pa.Table]] = collections.deque()
        for b in it:
            window.append(self._pool.submit(fn, _as_table(b)))
            if len(window) >= 2 * self.workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, mult in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * mult
    return int(quantity)


class RayEngine:
    """Ray Data engine (``spec.engine.type: ray``)."""

    WINDOW = 16

    def __init__(self, spec: Engine, work_dir: Path, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError as e:
            raise WorkloadError("spec.engine.type: ray needs the `ray[data]` package; install it "
                                "(pip install 'ray[data]==2.60.0') or use type: local") from e
        self.ray = ray
        self.temp_dir: str | None = None
        self.started = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "logging_level": "WARNING", "configure_logging": False}
            # A KubeRay RayJob runs this entrypoint on the cluster's head with RAY_ADDRESS set.
            address = spec.ray.address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, **kwargs)
            else:
                # Ray's Unix socket paths must stay under ~107 bytes: a deep artifact dir gets /tmp
                base = work_dir if len(str(work_dir)) < 40 else Path(tempfile.gettempdir())
                self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir=base)
                ray.init(num_cpus=spec.ray.num_cpus or workers or default_workers(),
                         object_store_memory=max(_memory_bytes(spec.ray.object_store_memory), 80 << 20),
                         _temp_dir=self.temp_dir, **kwargs)
            self.started = True
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False

    def map(self, fn: BatchFn, batches: Iterable[pa.Table | pa.RecordBatch]) -> Iterator[pa.Table]:
        window: list[pa.Table] = []
        for b in batches:
            window.append(_as_table(b))
            if len(window) >= self.WINDOW:
                yield from self._run(fn, window)
                window = []
        if window:
            yield from self._run(fn, window)

    def _run(self, fn: BatchFn, tables: list[pa.Table]) -> Iterator[pa.Table]:
        mapped = self.ray.data.from_arrow(tables).map_batches(
            fn, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
        yield from mapped.iter_batches(batch_format="pyarrow", batch_size=None)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def make_engine(spec: Engine, work_dir: Path, workers: int | None = None) -> LocalEngine | RayEngine:
    workers = workers or spec.workers
    if spec.type == "ray":
        return RayEngine(spec, work_dir, workers)
    return LocalEngine(workers)
