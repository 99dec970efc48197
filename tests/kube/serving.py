"""Running the test API server: a background thread on a free port, and a kubeconfig for it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import yaml

from .apiserver import KubeAPIServer


@contextlib.contextmanager
def serve_in_thread(server: KubeAPIServer, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve on a free port of ``host`` from a background thread; yields the base URL.

    A thread of its own, so synchronous tests (kubectl as a subprocess, ``kopf.testing.KopfRunner``,
    the ``kubernetes`` client) can block while it answers.
    """
    started = threading.Event()
    state: dict[str, Any] = {}

    async def run() -> None:
        async with server, kmock.Server(server, host=host) as http:
            state["loop"], state["stop"] = asyncio.get_running_loop(), asyncio.Event()
            state["url"] = f"http://{host}:{http.port}"
            started.set()
            await state["stop"].wait()
            server.store.close_watches()
            await asyncio.sleep(0.05)

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:
            state["error"] = exc
            started.set()

    thread = threading.Thread(target=main, name="kube-apiserver", daemon=True)
    thread.start()
    started.wait(30)
    if "error" in state:
        raise state["error"]
    try:
        yield state["url"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(30)


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    """A kubeconfig for ``url`` (for kubectl, the ``kubernetes`` client and kopf via $KUBECONFIG)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "llmfab-test", "cluster": {"server": url}}],
        "users": [{"name": "llmfab-test", "user": {"token": "llmfab-test-token"}}],
        "contexts": [
            {
                "name": "llmfab-test",
                "context": {"cluster": "llmfab-test", "user": "llmfab-test", "namespace": namespace},
            }
        ],
        "current-context": "llmfab-test",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
