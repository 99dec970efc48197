"""The human-feedback web app served beside vLLM (``spec.feedback``): a person compares two
completions of one prompt and picks A, B or a tie, optionally editing the better one.

Routes: ``GET /`` the voting page; ``GET /pair`` a pair to judge (JSON; two new completions from
the OpenAI endpoint's ``/v1/completions`` with two sampling settings when no open pair is left);
``POST /vote`` ``{pair, choice, edited}``; ``GET /stats`` (and ``/stats.json``) the progress and
agreement view; ``GET /healthz`` for probes, the only route without auth.

Standard library ``ThreadingHTTPServer``, not FastAPI: five routes and a cookie need no framework,
the serving image (vLLM's) and the main venv need nothing installed, and `llmfab serve run` can run
the app on a thread of its own process beside the vLLM child. One thread per request is plenty for
a handful of people clicking; the store serialises writes (``feedback_store``).

Auth: the token comes from the environment variable ``spec.feedback.tokenEnv`` (a Secret in pods).
A request passes with ``Authorization: Bearer TOKEN`` or the cookie that ``/?token=TOKEN`` sets once;
otherwise 401. Without a token the app is open and says so at start-up. Which sampling setting is
shown as A is random per pair (recorded with the pair), so position bias does not favour one.
"""

from __future__ import annotations

import hmac
import json
import os
import random
import re
import threading
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from llmfab.api.inference_service import FeedbackSpec
from llmfab.serving.feedback_page import UNAUTHORIZED_PAGE, VOTE_PAGE, stats_page
from llmfab.serving.feedback_store import CHOICES, FILENAME, FeedbackStore, UnknownPair

TOKEN_COOKIE = "llmfab_feedback_token"
VOTER_COOKIE = "llmfab_voter"
COOKIE_MAX_AGE = 30 * 24 * 3600
MAX_BODY = 64 * 1024
# Two settings a person can tell apart: a focused one and vLLM's/OpenAI's default-ish one.
SAMPLINGS: tuple[dict[str, float], dict[str, float]] = (
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.0, "top_p": 0.95},
)


def load_prompts(path: Path | None) -> list[str]:
    """Prompts from a JSONL file (``{"prompt": ...}`` per line), a text file (one per line), or the
    built-in list when ``path`` is None."""
    if path is None:
        text = resources.files("llmfab.serving").joinpath("feedback_prompts.txt").read_text()
        return [line for line in text.splitlines() if line.strip()]
    if not path.is_file():
        raise FileNotFoundError(f"spec.feedback.prompts: {path} does not exist; give a JSONL or text file")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        prompts = [str(json.loads(line)["prompt"]) for line in lines]
    else:
        prompts = lines
    if not prompts:
        raise ValueError(f"spec.feedback.prompts: {path} holds no prompts")
    return prompts


@dataclass
class CompletionsClient:
    """Two completions of one prompt from an OpenAI-compatible ``/v1/completions``."""

    base_url: str  # ".../v1"
    model: str
    max_tokens: int = 64
    timeout: float = 120.0

    def complete(self, prompt: str, sampling: dict[str, Any]) -> str:
        body = {"model": self.model, "prompt": prompt, "max_tokens": self.max_tokens, **sampling}
        req = urllib.request.Request(
            f"{self.base_url}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return str(json.load(r)["choices"][0]["text"])

    def pair(self, prompt: str) -> tuple[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]:
        settings = list(SAMPLINGS)
        random.shuffle(settings)
        samplings = tuple(
            {**s, "seed": random.randrange(2**31), "max_tokens": self.max_tokens, "model": self.model}
            for s in settings
        )
        with ThreadPoolExecutor(2) as pool:
            a, b = pool.map(lambda s: self.complete(prompt, s), samplings)
        return (a, b), (samplings[0], samplings[1])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of clicks got connection resets.
    request_queue_size = 128


@dataclass
class FeedbackApp:
    store: FeedbackStore
    client: CompletionsClient
    token: str = ""
    votes_per_pair: int = 3
    host: str = "127.0.0.1"
    port: int = 8080
    _server: _Server | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the app first"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self._server.server_address[1]}/"

    def start(self) -> FeedbackApp:
        handler = type("Handler", (FeedbackHandler,), {"app": self})
        self._server = _Server((self.host, self.port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="feedback-app", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.store.close()

    def authorized(self, header: str | None, cookie: str | None) -> bool:
        if not self.token:
            return True
        given = header.removeprefix("Bearer ").strip() if header and header.startswith("Bearer ") else cookie
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def next_pair(self, voter: str) -> dict[str, Any]:
        open_pair = self.store.open_pair(voter, self.votes_per_pair)
        if open_pair is not None:
            return open_pair
        prompt_id, prompt = self.store.next_prompt()
        completions, samplings = self.client.pair(prompt)
        return self.store.pair(self.store.add_pair(prompt_id, completions, samplings))


class FeedbackHandler(BaseHTTPRequestHandler):
    app: FeedbackApp  # set on the per-app subclass
    server_version = "llmfab-feedback"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: vLLM's log is the service's log; votes are in the store."""

    def _cookies(self) -> dict[str, str]:
        jar = SimpleCookie(self.headers.get("Cookie", ""))
        return {k: m.value for k, m in jar.items()}

    def _send(self, code: int, body: str, ctype: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _json(self, code: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(data), "application/json", headers)

    def _voter(self) -> tuple[str, dict[str, str]]:
        """The voter id: the cookie, else a new random one (and the header that sets it)."""
        voter = self._cookies().get(VOTER_COOKIE)
        if voter and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", voter):
            return voter, {}
        voter = uuid.uuid4().hex
        return voter, {
            "Set-Cookie": f"{VOTER_COOKIE}={voter}; Path=/; Max-Age={COOKIE_MAX_AGE}; SameSite=Strict"
        }

    def _gate(self, url: Any) -> bool:
        """True when the request may proceed; answers 401 or the token-to-cookie redirect otherwise."""
        query = parse_qs(url.query)
        if "token" in query:
            if not self.app.authorized(f"Bearer {query['token'][0]}", None):
                self._send(HTTPStatus.UNAUTHORIZED, UNAUTHORIZED_PAGE, "text/html")
                return False
            rest = urlencode({k: v for k, v in query.items() if k != "token"}, doseq=True)
            cookie = f"{TOKEN_COOKIE}={self.app.token}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite=Strict"
            self._send(HTTPStatus.SEE_OTHER, "", "text/plain",
                       {"Location": url.path + (f"?{rest}" if rest else ""), "Set-Cookie": cookie})  # fmt: skip
            return False
        if self.app.authorized(self.headers.get("Authorization"), self._cookies().get(TOKEN_COOKIE)):
            return True
        if url.path.endswith(".json") or url.path in ("/pair", "/vote"):
            self._json(
                HTTPStatus.UNAUTHORIZED, {"error": "token required (Authorization: Bearer or ?token=)"}
            )
        else:
            self._send(HTTPStatus.UNAUTHORIZED, UNAUTHORIZED_PAGE, "text/html")
        return False

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._json(HTTPStatus.OK, {"ok": True})
            return
        if not self._gate(url):
            return
        if url.path == "/":
            _, set_cookie = self._voter()
            self._send(HTTPStatus.OK, VOTE_PAGE, "text/html", set_cookie)
        elif url.path == "/pair":
            voter, set_cookie = self._voter()
            try:
                pair = self.app.next_pair(voter)
            except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
                self._json(
                    HTTPStatus.BAD_GATEWAY, {"error": f"completions endpoint {self.app.client.base_url}: {e}"}
                )
                return
            self._json(HTTPStatus.OK, pair, set_cookie)
        elif url.path == "/stats":
            self._send(HTTPStatus.OK, stats_page(self.app.store.stats()), "text/html")
        elif url.path == "/stats.json":
            self._json(HTTPStatus.OK, self.app.store.stats())
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {url.path}"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if not self._gate(url):
            return
        if url.path != "/vote":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {url.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            pair_id, choice, edited = int(body["pair"]), body["choice"], body.get("edited")
        except (ValueError, KeyError, TypeError):
            self._json(
                HTTPStatus.BAD_REQUEST,
                {"error": 'body: want {"pair": ID, "choice": "a|b|tie", "edited": null}'},
            )
            return
        if choice not in CHOICES or not (edited is None or isinstance(edited, str)):
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"choice: {choice!r} is not one of a, b, tie"})
            return
        voter, set_cookie = self._voter()
        try:
            vote_id = self.app.store.vote(pair_id, choice, voter, edited)
        except UnknownPair as e:
            self._json(HTTPStatus.NOT_FOUND, {"error": str(e)})
            return
        self._json(HTTPStatus.OK, {"ok": True, "vote": vote_id}, set_cookie)


def feedback_app(
    spec: FeedbackSpec, out_dir: Path, openai_url: str, model: str, host: str, prompts_path: Path | None
) -> FeedbackApp:
    """The app of one InferenceService, not yet started: store in ``out_dir``, token from the env."""
    token = os.environ.get(spec.token_env, "")
    if not token:
        print(
            f"WARNING: spec.feedback.tokenEnv: ${spec.token_env} is unset or empty, so the feedback app "
            "accepts anyone who can reach it; set it (a Secret in pods) to require a token",
            flush=True,
        )
    store = FeedbackStore(out_dir / FILENAME)
    store.add_prompts(load_prompts(prompts_path))
    client = CompletionsClient(openai_url, model, max_tokens=spec.max_tokens)
    return FeedbackApp(
        store, client, token=token, votes_per_pair=spec.votes_per_pair, host=host, port=spec.port
    )
