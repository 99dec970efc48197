"""A stand-in for vLLM behind the wake proxy, run as a real process (its own process group):

- ``GET /health``: 503 until ``--ready-after`` seconds after start, then 200;
- ``GET|POST /echo...``: what arrived (method, path with query, headers, body) and this
  process's pid and its grandchild's, as JSON;
- ``POST /v1/completions``: ``stream: true`` sends one server-sent event, then waits until
  ``POST /gate`` opens the gate, then the rest and ``data: [DONE]``; else a JSON completion;
- ``GET /v1/models`` and a streamed ``POST /v1/chat/completions`` (for ``llmfab chat``);
- ``GET /metrics``: one series, ``fake_upstream_up 1``.

``--exit-at-start CODE`` prints a line and exits (a server that dies during start-up);
``--grandchild`` starts a ``sleep`` in the same process group, as vLLM starts its engine process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from aiohttp import web


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ready-after", type=float, default=0.0)
    p.add_argument("--exit-at-start", type=int)
    p.add_argument("--grandchild", action="store_true")
    args, _ = p.parse_known_args()
    if args.exit_at_start is not None:
        print("fake vLLM: refusing to start (--exit-at-start)", flush=True)
        sys.exit(args.exit_at_start)
    started = time.monotonic()
    sleeper = subprocess.Popen(["sleep", "1000"]) if args.grandchild else None
    gate = asyncio.Event()

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if time.monotonic() - started >= args.ready_after else 503)

    async def echo(request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        return web.json_response({"method": request.method, "path": request.raw_path,
                                  "headers": [[k, v] for k, v in request.headers.items()], "body": body,
                                  "pid": os.getpid(), "grandchild": sleeper.pid if sleeper else None})  # fmt: skip

    async def events(request: web.Request, chunks: list[dict[str, Any]], wait_after_first: bool = False
                     ) -> web.StreamResponse:  # fmt: skip
        """Server-sent events, one per chunk, then ``[DONE]``; optionally held after the first until the gate opens."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, chunk in enumerate(chunks):
            if i == 1 and wait_after_first:
                await gate.wait()
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({"object": "text_completion", "choices": [{"index": 0, "text": "ok"}]})
        words = ("first", "second", "third")
        return await events(request, [{"choices": [{"text": w}]} for w in words], wait_after_first=True)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        return await events(request, [{"choices": [{"delta": {"content": p}}]} for p in ("hello ", "from fake")])

    async def open_gate(request: web.Request) -> web.Response:
        gate.set()
        return web.Response(text="open")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="# TYPE fake_upstream_up gauge\nfake_upstream_up 1.0\n")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/gate", open_gate)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/metrics", metrics)
    print(f"fake vLLM on 127.0.0.1:{args.port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
