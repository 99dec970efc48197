"""One vLLM server that runs only while requests come: Idle -> Waking -> Ready -> Idle.

``llmfab up`` scales an InferenceService with ``spec.autoscaling.minReplicas: 0`` to zero on one
machine with this and the wake proxy in front of it (``wake_proxy.py``). The first request starts
the server and waits for its ``/health``; requests that arrive meanwhile wait for the same start;
``idleSeconds`` after the last request in flight finished, the server's process group gets SIGTERM
(SIGKILL after a bounded grace) and the memory it held, GPU memory included, is free again.

Everything here runs on the proxy's event loop (one thread), so the state needs no lock; the
blocking parts (starting a process, waiting for its group to exit) go to the loop's executor.
Each transition is handed to ``on_change`` with the ``status.scale`` it leads to, which the
workload writes through its status reporter.
"""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from llmfab.api.common import utc_now
from llmfab.api.inference_service import ScaleStatus
from llmfab.serving.scale_metrics import ScaleMetrics

HEALTH_POLL_SECONDS = 0.2
EXIT_POLL_SECONDS = 1.0
UNKNOWN_COLD_START_SECONDS = 10.0  # Retry-After before the first wake has been timed


class ServerHandle(Protocol):
    """A started server process (``workload.ServerProcess``)."""

    proc: subprocess.Popen[str]
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, grace: float = 30.0) -> int: ...

    def tail_text(self) -> str: ...


Launch = Callable[[], tuple[ServerHandle, str]]
"""Starts a server on a free port; returns it and its base URL (``http://127.0.0.1:PORT``)."""
OnChange = Callable[[ScaleStatus, str, str, bool], None]
"""(the new status.scale, event reason, message, whether it is a warning)."""


@dataclass(frozen=True)
class WakeSettings:
    idle_seconds: float  # spec.autoscaling.idleSeconds
    start_timeout: float  # a start that has not answered /health by then failed
    stop_grace: float = 20.0  # SIGTERM, then SIGKILL: within llmfab up's 30 s grace for the workload


class WakeTimeout(Exception):
    """No ready server by the request's deadline (``coldStartTimeoutSeconds``)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


class WakeFailed(Exception):
    """The server could not be started (it exited, or never answered), or the service is stopping."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class OnDemandServer:
    def __init__(self, launch: Launch, settings: WakeSettings, metrics: ScaleMetrics, on_change: OnChange) -> None:
        self._launch = launch
        self.settings = settings
        self.metrics = metrics
        self._on_change = on_change
        self.status = ScaleStatus(state="Idle", since=utc_now())
        self.in_flight = 0
        self._server: ServerHandle | None = None
        self._base: str | None = None  # set only while Ready
        self._waking: asyncio.Task[str] | None = None
        self._wake_began = 0.0
        self._stopping: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def ready_base(self) -> str | None:
        """The server's base URL while it is ready; None otherwise (asking never wakes it)."""
        return self._base if self._stopping is None else None

    async def acquire(self, deadline: float) -> str:
        """The ready server's base URL, waking it if asleep, by ``deadline`` (the loop's clock).
        The caller counts as in flight, which holds off the idle stop, until :meth:`release`."""
        self.in_flight += 1
        self._cancel_idle_timer()
        try:
            return await self._ready(deadline)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._arm_idle_timer()

    async def _ready(self, deadline: float) -> str:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise WakeFailed("the service is stopping", status=503)
            remaining = max(0.0, deadline - loop.time())
            if self._stopping is not None:  # an idle stop under way finishes first, then a new wake
                try:
                    await asyncio.wait_for(asyncio.shield(self._stopping), remaining)
                except TimeoutError:
                    raise WakeTimeout(self.retry_after()) from None
                continue
            if self._base is not None:
                return self._base
            if self._waking is None:
                self._waking = asyncio.create_task(self._wake())
            self.metrics.held.inc()
            try:
                return await asyncio.wait_for(asyncio.shield(self._waking), remaining)
            except TimeoutError:
                raise WakeTimeout(self.retry_after()) from None
            finally:
                self.metrics.held.dec()

    def retry_after(self) -> int:
        """Seconds a held-out client should wait: the last cold start's length less how long this
        one has run (10 s before any cold start was timed), at least 1."""
        expected = self.status.last_cold_start_seconds or UNKNOWN_COLD_START_SECONDS
        running = time.monotonic() - self._wake_began if self._waking is not None else 0.0
        return max(1, math.ceil(expected - running))

    async def _wake(self) -> str:
        loop = asyncio.get_running_loop()
        self._wake_began, began_at = time.monotonic(), utc_now()
        self._change("Waking", "Waking", "a request arrived while scaled to zero: starting vLLM")
        self.metrics.replicas.set(1)
        try:
            server, base = await loop.run_in_executor(None, self._launch)
            self._server = server
            await self._wait_healthy(server, base)
        except Exception as e:
            await self._stop_server()
            failure = e if isinstance(e, WakeFailed) else WakeFailed(f"starting vLLM failed: {type(e).__name__}: {e}")
            self._change("Idle", "WakeFailed", str(failure), warning=not self._closed)
            if failure is e:
                raise
            raise failure from e
        finally:
            self._waking = None
        seconds = time.monotonic() - self._wake_began
        self.metrics.cold_starts.inc()
        self.metrics.cold_start_seconds.observe(seconds)
        self._base = base
        self.status = self.status.model_copy(update={
            "last_cold_start_time": began_at, "last_cold_start_seconds": round(seconds, 3),
            "cold_starts": self.status.cold_starts + 1,
        })  # fmt: skip
        self._change("Ready", "Ready", f"vLLM ready after a cold start of {seconds:.1f} s")
        if self.in_flight == 0:
            self._arm_idle_timer()
        return base

    async def _wait_healthy(self, server: ServerHandle, base: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.start_timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                code = server.proc.poll()
                if code is not None:
                    tail = await loop.run_in_executor(None, server.tail_text)
                    raise WakeFailed(f"vLLM exited with code {code} during start-up (full log: {server.log_path}); "
                                     f"last lines:\n{tail}")  # fmt: skip
                if self._closed:
                    raise WakeFailed("the service is stopping", status=503)
                try:
                    async with session.get(f"{base}/health") as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise WakeFailed(f"vLLM did not answer {base}/health within {self.settings.start_timeout:.0f} s "
                                     f"(full log: {server.log_path}); set LLMFAB_SERVE_START_TIMEOUT to wait longer")  # fmt: skip
                await asyncio.sleep(HEALTH_POLL_SECONDS)

    def _arm_idle_timer(self) -> None:
        self._cancel_idle_timer()
        if self._base is not None and not self._closed:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(self.settings.idle_seconds, self._idle_expired)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if self.in_flight == 0 and self._base is not None and self._stopping is None and not self._closed:
            message = f"no request for spec.autoscaling.idleSeconds ({self.settings.idle_seconds:g} s): vLLM stopped"
            self._stopping = asyncio.create_task(self._scale_down("ScaledToZero", message))

    async def _scale_down(self, reason: str, message: str, warning: bool = False) -> None:
        try:
            await self._stop_server()
            self._change("Idle", reason, message, warning)
        finally:
            self._stopping = None

    async def _stop_server(self) -> None:
        """SIGTERM the server's process group, SIGKILL it after the grace; returns when it is gone."""
        server, self._server, self._base = self._server, None, None
        if server is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, server.stop, signal.SIGTERM, self.settings.stop_grace
            )
        self.metrics.replicas.set(0)

    async def watch(self) -> None:
        """Notice a ready server that exited on its own: back to Idle, so the next request starts it again."""
        while not self._closed:
            await asyncio.sleep(EXIT_POLL_SECONDS)
            server = self._server
            if self._base is None or server is None or self._stopping is not None:
                continue
            code = server.proc.poll()
            if code is not None:
                message = (f"vLLM exited unexpectedly with code {code} (full log: {server.log_path}); "
                           "the next request starts it again")  # fmt: skip
                self._stopping = asyncio.create_task(self._scale_down("ServerExited", message, warning=True))

    async def close(self) -> None:
        """Stop for good: a wake under way gives up, the server stops, new requests get 503."""
        self._closed = True
        self._cancel_idle_timer()
        for task in (self._stopping, self._waking):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        await self._stop_server()

    def _change(self, state: str, reason: str, message: str, warning: bool = False) -> None:
        self.status = self.status.model_copy(update={"state": state, "since": utc_now()})
        self._on_change(self.status, reason, message, warning)
