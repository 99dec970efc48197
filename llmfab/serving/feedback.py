"""The human-feedback web app served beside vLLM (``spec.feedback``): a person compares two
completions of one prompt and picks A, B or a tie, optionally editing the better one.

Routes: ``GET /`` the voting page; ``GET /pair`` a pair to judge (JSON; two new completions from
the OpenAI endpoint's ``/v1/completions`` with two sampling settings when no open pair is left);
``POST /vote`` ``{pair, choice, edited}``; ``GET /stats`` (and ``/stats.json``) the progress and
agreement view; ``GET /healthz`` for probes, the only route without auth.

aiohttp, on an event loop of its own thread (``llmfab serve run`` runs the app in its own process
beside the vLLM child; vLLM depends on aiohttp, so the serving image has it): a connection costs a
coroutine, not a thread, so clients that send slowly cannot use up the process (issue 19). Bounds:
the request line and headers must arrive within ``read_timeout`` of connecting (aiohttp's keep-alive
timer, which starts at connect and also closes idle keep-alive connections), a body within
``read_timeout`` of its headers (else 408), at most ``MAX_BODY`` bytes (413); the blocking SQLite
calls run on ``DB_WORKERS`` threads and at most ``MAX_GENERATING`` pairs are being generated at once,
so a flood of requests queues instead of taking CPU from vLLM. Every refused request gets a 4xx with
its reason (JSON ``{"error": ...}``; aiohttp's own for an unparsable request), never a traceback.

Auth: the token comes from the environment variable ``spec.feedback.tokenEnv`` (a Secret in pods,
``spec.feedback.tokenSecret``). A request passes with ``Authorization: Bearer TOKEN`` or the cookie
that ``/?token=TOKEN`` sets once (30 days, HttpOnly, SameSite=Strict, and Secure when the request
came over TLS: ``X-Forwarded-Proto: https`` from the proxy in front); otherwise 401. Without a token
the app is open and says so at start-up.

CSRF: a vote must be ``Content-Type: application/json`` (415 otherwise), which no form and no
``no-cors`` fetch can send, and its ``Origin`` must be this app's own (``X-Forwarded-Proto`` or http,
``://``, ``Host``; 403 otherwise): a page on another port of the same host is same-site, so
SameSite cookies alone do not stop it. A vote without ``Origin`` (not a browser: browsers send it
on every POST) is refused when it authenticates by cookie; scripts send the Bearer header.

Which sampling setting is shown as A is random per pair (recorded with the pair), so position bias
does not favour one.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import os
import random
import re
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pydantic
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from llmfab.api.inference_service import FeedbackSpec
from llmfab.serving.feedback_page import UNAUTHORIZED_PAGE, VOTE_PAGE, stats_page
from llmfab.serving.feedback_store import FILENAME, FeedbackStore, UnknownPair

TOKEN_COOKIE = "llmfab_feedback_token"
VOTER_COOKIE = "llmfab_voter"
COOKIE_MAX_AGE = 30 * 24 * 3600
MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0  # seconds: headers after connect, a body after its headers, an idle keep-alive
DB_WORKERS = 4
MAX_GENERATING = 2
# Two settings a person can tell apart: a focused one and vLLM's/OpenAI's default-ish one.
SAMPLINGS: tuple[dict[str, float], dict[str, float]] = (
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.0, "top_p": 0.95},
)
VOTE_SHAPE = 'want {"pair": ID, "choice": "a|b|tie", "edited": null}'
log = logging.getLogger(__name__)
T = TypeVar("T")


class _NoClientFaults(logging.Filter):
    """aiohttp logs each unparsable request with a traceback; that is the client's fault, answered
    with a 400 and its reason, and a hostile client must not be able to fill the service's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


protocol_log = logging.getLogger(f"{__name__}.protocol")
protocol_log.addFilter(_NoClientFaults())


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


class VoteBody(pydantic.BaseModel):
    """``POST /vote``'s body. The pair id's bounds are SQLite's INTEGER; pydantic's JSON parser
    refuses what ``json.loads`` would turn into an exception later (``1e400``, ``NaN``, deep nesting)."""

    pair: int = pydantic.Field(strict=True, ge=1, le=2**63 - 1)
    choice: Literal["a", "b", "tie"]
    edited: str | None = None


def vote_error(e: pydantic.ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(x) for x in first["loc"])
    return f"body{'.' + where if where else ''}: {first['msg']}; {VOTE_SHAPE}"


@dataclass
class CompletionsClient:
    """Two completions of one prompt from an OpenAI-compatible ``/v1/completions``."""

    base_url: str  # ".../v1"
    model: str
    max_tokens: int = 64
    timeout: float = 120.0

    async def complete(self, session: aiohttp.ClientSession, prompt: str, sampling: dict[str, Any]) -> str:
        body = {"model": self.model, "prompt": prompt, "max_tokens": self.max_tokens, **sampling}
        async with session.post(f"{self.base_url}/completions", json=body) as r:
            r.raise_for_status()
            return str((await r.json(content_type=None))["choices"][0]["text"])

    async def pair(self, prompt: str) -> tuple[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]:
        settings = list(SAMPLINGS)
        random.shuffle(settings)
        samplings = tuple(
            {**s, "seed": random.randrange(2**31), "max_tokens": self.max_tokens, "model": self.model}
            for s in settings
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
            a, b = await asyncio.gather(*(self.complete(session, prompt, s) for s in samplings))
        return (a, b), (samplings[0], samplings[1])


def json_response(status: int, data: Any, **kwargs: Any) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"}, **kwargs)


def error(status: int, message: str) -> web.Response:
    return json_response(status, {"error": message})


def behind_tls(request: web.Request) -> bool:
    """The client's connection is TLS: ours, or the proxy's in front (its ``X-Forwarded-Proto``)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def _origin(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the scheme's default port filled in; None when unparsable."""
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    except ValueError:  # a bracket left open, a port that is no number or out of range
        return None
    host = parts.hostname
    if not host or any(c in netloc for c in "/?#@\\ \t"):
        return None
    return scheme, host, port


def origin_problem(request: web.Request) -> str | None:
    """Why ``Origin`` is not this app's own origin (None when it is)."""
    origin, host = request.headers.get("Origin", ""), request.headers.get("Host", "")
    scheme = "https" if behind_tls(request) else "http"
    given, _, netloc = origin.partition("://")  # an Origin is scheme://host[:port], nothing more
    own = _origin(scheme, host)
    if own is not None and _origin(given, netloc) == own:
        return None
    return (
        f"Origin {origin!r} is not this app's {scheme}://{host}: votes are accepted only from the "
        "app's own page (behind a TLS proxy, the proxy must set X-Forwarded-Proto)"
    )


@dataclass
class FeedbackApp:
    store: FeedbackStore
    client: CompletionsClient
    token: str = ""
    votes_per_pair: int = 3
    host: str = "127.0.0.1"
    port: int = 8080
    read_timeout: float = READ_TIMEOUT
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _stopping: asyncio.Event | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _db: ThreadPoolExecutor | None = field(default=None, init=False)
    _generating: asyncio.Semaphore | None = field(default=None, init=False)
    _bound_port: int = field(default=0, init=False)

    @property
    def url(self) -> str:
        assert self._bound_port, "start() the app first"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self._bound_port}/"

    def start(self) -> FeedbackApp:
        """Serve on a thread of its own; returns once the port is bound (or raises why it is not)."""
        ready: Future[int] = Future()
        self._db = ThreadPoolExecutor(DB_WORKERS, thread_name_prefix="feedback-db")
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(ready)), name="feedback-app", daemon=True
        )
        self._thread.start()
        self._bound_port = ready.result(timeout=60)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._db is not None:
            self._db.shutdown(wait=True)
        self.store.close()

    async def _serve(self, ready: Future[int]) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self._generating = asyncio.Semaphore(MAX_GENERATING)
        app = web.Application(middlewares=[self._errors, self._gate], client_max_size=MAX_BODY)
        app.router.add_get("/", self._page)
        app.router.add_get("/pair", self._pair)
        app.router.add_post("/vote", self._vote)
        app.router.add_get("/stats", self._stats_page)
        app.router.add_get("/stats.json", self._stats_json)
        app.router.add_get("/healthz", self._healthz)
        # keepalive_timeout: aiohttp starts this timer at connect and closes a connection still
        # waiting for its request when it fires, so it bounds a request's line and headers too.
        # lingering_time: how long to drain an unread body (after a 408/413) before closing.
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, logger=protocol_log, shutdown_timeout=5,
            keepalive_timeout=self.read_timeout, lingering_time=min(1.0, self.read_timeout),
        )  # fmt: skip
        try:
            await runner.setup()
            await web.TCPSite(runner, self.host, self.port, backlog=128).start()
        except BaseException as e:
            await runner.cleanup()
            ready.set_exception(e)
            return
        ready.set_result(int(runner.addresses[0][1]))
        try:
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    async def _in_db(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking store call on the bounded pool, off the event loop."""
        assert self._loop is not None
        return await self._loop.run_in_executor(self._db, functools.partial(fn, *args))

    def credential(self, request: web.Request) -> Literal["open", "bearer", "cookie"] | None:
        """How the request is authorized, or None when it is not."""
        if not self.token:
            return "open"
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":  # the scheme is case-insensitive (RFC 9110 11.1)
            return "bearer" if self.token_matches(given.strip()) else None
        return "cookie" if self.token_matches(request.cookies.get(TOKEN_COOKIE, "")) else None

    def token_matches(self, given: str) -> bool:
        """Constant-time; any token passes an open app (no token set), as before."""
        # surrogatepass: a header or query that is not UTF-8 reaches us as lone surrogates.
        return not self.token or hmac.compare_digest(
            given.encode(errors="surrogatepass"), self.token.encode()
        )

    async def next_pair_async(self, voter: str) -> dict[str, Any]:
        open_pair = await self._in_db(self.store.open_pair, voter, self.votes_per_pair)
        if open_pair is not None:
            return open_pair
        assert self._generating is not None
        async with self._generating:
            # Another request may have made one while this one waited for its turn.
            open_pair = await self._in_db(self.store.open_pair, voter, self.votes_per_pair)
            if open_pair is not None:
                return open_pair
            prompt_id, prompt = await self._in_db(self.store.next_prompt)
            completions, samplings = await self.client.pair(prompt)
            pair_id = await self._in_db(self.store.add_pair, prompt_id, completions, samplings)
        return await self._in_db(self.store.pair, pair_id)

    def next_pair(self, voter: str) -> dict[str, Any]:
        """:meth:`next_pair_async` from a thread outside the app's loop (a test, a REPL)."""
        assert self._loop is not None, "start() the app first"
        return asyncio.run_coroutine_threadsafe(self.next_pair_async(voter), self._loop).result()

    # Middlewares: outermost first.

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Routing misses as JSON reasons; a bug as a 500 whose traceback goes to the log only."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return error(404, f"no route {request.path}")
        except web.HTTPMethodNotAllowed as e:
            return error(
                405, f"{request.method} {request.path}: allowed {', '.join(sorted(e.allowed_methods))}"
            )
        except web.HTTPException:
            raise
        except ConnectionError:  # the client closed (or half-closed) before its body was in: no one to tell
            return error(400, "the connection closed before the request was complete")
        except Exception:
            log.exception("feedback app: %s %s failed", request.method, request.path)
            return error(500, "internal error; the service log has the details")

    @web.middleware
    async def _gate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Auth (and the one-time ``?token=`` to cookie redirect) before any route runs."""
        if request.path == "/healthz":
            return await handler(request)
        if "token" in request.query:
            if not self.token_matches(request.query["token"]):
                return web.Response(status=401, text=UNAUTHORIZED_PAGE, content_type="text/html")
            rest = [(k, v) for k, v in request.query.items() if k != "token"]
            # One leading slash: "//host" in Location would send the browser to another site.
            location = str(request.rel_url.with_path("/" + request.path.lstrip("/")).with_query(rest))
            response = web.Response(
                status=303, text="", headers={"Location": location, "Cache-Control": "no-store"}
            )
            self._set_cookie(request, response, TOKEN_COOKIE, self.token, httponly=True)
            return response
        how = self.credential(request)
        if how is None:
            if request.path.endswith(".json") or request.path in ("/pair", "/vote"):
                return error(401, "token required (Authorization: Bearer or ?token=)")
            return web.Response(status=401, text=UNAUTHORIZED_PAGE, content_type="text/html")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            problem = self._csrf_problem(request, how)
            if problem:
                return error(403, problem)
        return await handler(request)

    def _csrf_problem(self, request: web.Request, how: str) -> str | None:
        if "Origin" in request.headers:
            return origin_problem(request)
        if how == "cookie":
            return (
                "a vote authorized by cookie needs the Origin header that browsers send; "
                "scripts send Authorization: Bearer TOKEN"
            )
        return None

    def _set_cookie(
        self, request: web.Request, response: web.StreamResponse, name: str, value: str, httponly: bool
    ) -> None:
        response.set_cookie(
            name, value, path="/", max_age=COOKIE_MAX_AGE, samesite="Strict", httponly=httponly,
            secure=behind_tls(request),
        )  # fmt: skip

    def _voter(self, request: web.Request) -> tuple[str, bool]:
        """The voter id from the cookie, else a new random one (and True: set the cookie)."""
        voter = request.cookies.get(VOTER_COOKIE, "")
        if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", voter):
            return voter, False
        return uuid.uuid4().hex, True

    def _with_voter(
        self, request: web.Request, response: web.Response, new: bool, voter: str
    ) -> web.Response:
        if new:
            self._set_cookie(request, response, VOTER_COOKIE, voter, httponly=False)
        return response

    # Routes.

    async def _healthz(self, request: web.Request) -> web.Response:
        return json_response(200, {"ok": True})

    async def _page(self, request: web.Request) -> web.Response:
        voter, new = self._voter(request)
        page = web.Response(text=VOTE_PAGE, content_type="text/html", headers={"Cache-Control": "no-store"})
        return self._with_voter(request, page, new, voter)

    async def _pair(self, request: web.Request) -> web.Response:
        voter, new = self._voter(request)
        try:
            pair = await self.next_pair_async(voter)
        except (TimeoutError, aiohttp.ClientError, KeyError, IndexError, TypeError, ValueError) as e:
            return error(502, f"completions endpoint {self.client.base_url}: {type(e).__name__}: {e}")
        return self._with_voter(request, json_response(200, pair), new, voter)

    async def _stats_page(self, request: web.Request) -> web.Response:
        stats = await self._in_db(self.store.stats)
        return web.Response(
            text=stats_page(stats), content_type="text/html", headers={"Cache-Control": "no-store"}
        )

    async def _stats_json(self, request: web.Request) -> web.Response:
        return json_response(200, await self._in_db(self.store.stats))

    async def _vote(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return error(415, f"Content-Type {request.content_type!r}: votes are application/json")
        if (request.content_length or 0) > MAX_BODY:
            return error(413, f"body of {request.content_length} bytes is over {MAX_BODY}")
        try:
            async with asyncio.timeout(self.read_timeout):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:  # chunked, no Content-Length
            return error(413, f"body over {MAX_BODY} bytes")
        except TimeoutError:
            return error(408, f"body not received within {self.read_timeout:g} s")
        try:
            body = VoteBody.model_validate_json(raw or b"{}")
        except pydantic.ValidationError as e:
            return error(400, vote_error(e))
        voter, new = self._voter(request)
        try:
            vote_id = await self._in_db(self.store.vote, body.pair, body.choice, voter, body.edited)
        except UnknownPair as e:
            return error(404, str(e))
        return self._with_voter(request, json_response(200, {"ok": True, "vote": vote_id}), new, voter)


def feedback_app(
    spec: FeedbackSpec, out_dir: Path, openai_url: str, model: str, host: str, prompts_path: Path | None,
    completion_timeout: float = 120.0,
) -> FeedbackApp:
    """The app of one InferenceService, not yet started: store in ``out_dir``, token from the env."""
    token = os.environ.get(spec.token_env, "")
    if not token:
        print(
            f"WARNING: spec.feedback.tokenEnv: ${spec.token_env} is unset or empty, so the feedback app "
            "accepts anyone who can reach it; set it (spec.feedback.tokenSecret in pods) to require a token",
            flush=True,
        )
    store = FeedbackStore(out_dir / FILENAME)
    store.add_prompts(load_prompts(prompts_path))
    client = CompletionsClient(openai_url, model, max_tokens=spec.max_tokens, timeout=completion_timeout)
    return FeedbackApp(
        store, client, token=token, votes_per_pair=spec.votes_per_pair, host=host, port=spec.port
    )
