"""A stand-in for vLLM's OpenAI server: ``/health`` and ``/v1/completions`` answering deterministic
text made from the prompt and the sampling settings, so tests know which completion came from which.

In-process (``FakeOpenAI().start()``) for the app tests, or as a script that takes vLLM's
``--host/--port`` arguments (``python fake_openai.py -m vllm... --port N``: unknown ones are
ignored), so ``llmfab serve run`` can start it as its "vLLM" child through ``LLMFAB_SERVE_PYTHON``.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def fake_text(prompt: str, body: dict[str, Any]) -> str:
    return f"{prompt} → t={body.get('temperature')} p={body.get('top_p')} seed={body.get('seed')}"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, code: int, data: Any) -> None:
        raw = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        self._reply(200 if self.path == "/health" else 404, {})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/completions":
            self._reply(404, {})
            return
        self._reply(200, {"object": "text_completion", "model": body["model"],
                          "choices": [{"index": 0, "text": fake_text(body["prompt"], body)}]})  # fmt: skip


class FakeOpenAI:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    args = sys.argv[1:]
    host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
    fake = FakeOpenAI(host, int(args[args.index("--port") + 1]))
    print(f"fake vLLM on {fake.url}", flush=True)
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        pass
