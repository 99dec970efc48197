"""``llmfab chat NAME``: a small interactive client for a running InferenceService.

Finds the server's URL in the service's status (``services/<name>.status.json``, written by
``llmfab serve run``), keeps the conversation, and streams each answer from
``/v1/chat/completions`` (server-sent events) as it is generated. Standard library only, so it
works from either venv.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from llmfab.api.inference_service import InferenceService
from llmfab.status import accepts_requests, asleep, read_status, status_path

# Seconds to wait for an answer's first bytes: a service scaled to zero may be starting its server
# (the wake proxy answers 503 after spec.autoscaling.coldStartTimeoutSeconds, 600 s by default).
WAKE_TIMEOUT = 900.0


class ChatError(RuntimeError):
    """The service is not running or not reachable; the message says what to do."""


def service_url(name: str, root: Path | None = None) -> str:
    status = read_status(InferenceService.ARTIFACT_DIR, name, root)
    if not status:
        path = status_path(InferenceService.ARTIFACT_DIR, name, root)
        raise ChatError(f"InferenceService {name!r} has no status ({path}); start it with `llmfab up -f FILE`")
    url = status.get("url")
    if not url or not accepts_requests(status):
        raise ChatError(
            f"InferenceService {name!r} is not serving (phase {status.get('phase', 'unknown')}); "
            "start it with `llmfab up -f FILE` and wait until it is ready"
        )
    return str(url).rstrip("/")


def served_model(url: str, timeout: float = 10.0) -> str:
    """The first model id the server lists (the spec's servedModelName)."""
    with urllib.request.urlopen(f"{url}/models", timeout=timeout) as r:
        return str(json.load(r)["data"][0]["id"])


def stream_chat(
    url: str, model: str, messages: list[dict[str, str]], max_tokens: int = 256, temperature: float = 0.7
) -> Iterator[str]:
    """Yield the text pieces of one streamed chat completion."""
    body = json.dumps(
        {"model": model, "messages": messages, "stream": True, "max_tokens": max_tokens, "temperature": temperature}
    ).encode()
    req = urllib.request.Request(
        f"{url}/chat/completions", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=WAKE_TIMEOUT) as r:
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield piece


def chat_loop(
    name: str,
    root: Path | None = None,
    url: str | None = None,
    system: str | None = None,
    max_tokens: int = 256,
    stdin: IO[str] = sys.stdin,
    stdout: IO[str] = sys.stdout,
) -> int:
    """Read a line, stream the answer, repeat until EOF or ``/quit``. Returns an exit code."""
    try:
        base = url.rstrip("/") if url else service_url(name, root)
        waking = not url and asleep(read_status(InferenceService.ARTIFACT_DIR, name, root))
        if waking:
            stdout.write(f"{name} is scaled to zero: this first request starts its server (a cold start)\n")
        model = served_model(base, timeout=WAKE_TIMEOUT if waking else 10.0)
    except (ChatError, urllib.error.URLError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    stdout.write(f"chatting with {model} at {base} (Ctrl-D or /quit to leave)\n")
    while True:
        stdout.write("> ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/quit":
            stdout.write("\n")
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.strip()})
        answer = []
        try:
            for piece in stream_chat(base, model, messages, max_tokens=max_tokens):
                answer.append(piece)
                stdout.write(piece)
                stdout.flush()
        except (urllib.error.URLError, OSError) as e:
            print(f"\nerror: {e}", file=sys.stderr)
            return 1
        stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(answer)})
