"""The wake proxy: holds an InferenceService's port while vLLM sleeps, and forwards to it while awake.

``llmfab up`` runs it for ``spec.autoscaling.minReplicas: 0`` (the cluster's counterpart is KEDA's
HTTP add-on interceptor). It binds ``spec.server.host:port``; vLLM, when the
:class:`~llmfab.serving.on_demand.OnDemandServer` runs it, listens on a free port of 127.0.0.1.

- ``GET /metrics``: the ``llmfab_serve_*`` series (``scale_metrics.py``), then vLLM's own while
  it runs. Never wakes the server and is not a request that keeps it awake, so a scraper does not.
- ``GET /health``: 200 from the proxy itself: the service answers requests, asleep or not.
- Anything else is forwarded (method, path, query, headers but the hop-by-hop ones, body), waking
  the server first if it sleeps. The answer goes back as vLLM writes it, chunk by chunk, so
  server-sent events (``stream: true``) arrive token by token. A request still waiting for the
  server after ``spec.autoscaling.coldStartTimeoutSeconds`` is answered 503 with ``Retry-After``
  and an OpenAI-style JSON error; one whose wake failed gets 502 with vLLM's last log lines.

aiohttp on an event loop of its own thread, like the feedback app: the workload's main thread
keeps the signal handlers. One client session with unlimited keep-alive connections to vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import Future

import aiohttp
from aiohttp import web
from multidict import CIMultiDictProxy
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from llmfab.serving.on_demand import OnDemandServer, WakeFailed, WakeTimeout
from llmfab.serving.scale_metrics import ScaleMetrics

# RFC 9110 §7.6.1 hop-by-hop fields, plus those the client library sets itself (Host, Content-Length).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"})  # fmt: skip
MAX_BODY = 64 * 2**20  # a request body read before forwarding; prompts are far smaller
log = logging.getLogger(__name__)


def end_to_end(headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    """The fields a proxy passes on: all but the hop-by-hop ones and those ``Connection`` names."""
    named = {token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")}
    return [(k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP | named]


def openai_error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    """An error as OpenAI's API and vLLM write one, so OpenAI clients show its message."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status, headers=headers)


class WakeProxy:
    def __init__(self, server: OnDemandServer, metrics: ScaleMetrics, host: str, port: int,
                 cold_start_timeout: float) -> None:  # fmt: skip
        self.server = server
        self.metrics = metrics
        self.host, self.port = host, port
        self.cold_start_timeout = cold_start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> WakeProxy:
        """Serve on a thread of its own; returns once the port is bound (or raises why it is not)."""
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve(ready)), name="wake-proxy",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        ready.result(timeout=60)
        return self

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop serving and stop vLLM (SIGTERM, SIGKILL after the grace); returns when both are done."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    async def _serve(self, ready: Future[None]) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )  # fmt: skip
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5)
        try:
            await runner.setup()
            await web.TCPSite(runner, self.host, self.port, backlog=1024).start()
        except BaseException as e:
            await runner.cleanup()
            await self._session.close()
            ready.set_exception(e)
            return
        ready.set_result(None)
        watcher = asyncio.create_task(self.server.watch())
        try:
            await self._stop.wait()
        finally:
            watcher.cancel()
            await self.server.close()  # held and in-flight requests end with it
            await runner.cleanup()
            await self._session.close()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        base = self.server.ready_base
        if base is not None and self._session is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._session.get(f"{base}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        body += await r.read()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._loop is not None
        deadline = self._loop.time() + self.cold_start_timeout
        try:
            base = await self.server.acquire(deadline)
        except WakeTimeout as e:
            self.metrics.wake_timeouts.inc()
            message = (
                f"{self.metrics.model_name} was scaled to zero and its server is still starting after "
                f"spec.autoscaling.coldStartTimeoutSeconds ({self.cold_start_timeout:g} s); retry after "
                f"{e.retry_after} s, or raise spec.autoscaling.coldStartTimeoutSeconds"
            )
            return openai_error(503, message, "ServiceUnavailable", {"Retry-After": str(e.retry_after)})
        except WakeFailed as e:
            return openai_error(e.status, f"{self.metrics.model_name}: {e}", "ServerError")
        try:
            return await self._relay(request, base)
        finally:
            self.server.release()

    async def _relay(self, request: web.Request, base: str) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = end_to_end(request.headers)
        url = URL(base + request.raw_path, encoded=True)
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(request.method, url, headers=headers, data=body or None,
                                             allow_redirects=False) as upstream:  # fmt: skip
                self.metrics.proxied(upstream.status)
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in end_to_end(upstream.headers):
                    response.headers.add(key, value)
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            if response is None or not response.prepared:
                return openai_error(502, f"{self.metrics.model_name}: vLLM at {base}: {type(e).__name__}: {e}",
                                    "ServerError")  # fmt: skip
            # Cut off midway (the client left, or vLLM did): close the connection rather than let
            # the client take a truncated answer for a whole one.
            log.debug("relay of %s ended early: %s", request.path, e)
            if request.transport is not None:
                request.transport.close()
            return response
