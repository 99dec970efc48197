"""The human-feedback app (``spec.feedback``) against a fake OpenAI completions server on loopback:
a real browser votes, parallel votes are all kept, auth, export to preference pairs, and the wiring
into ``llmfab serve run`` (with the fake server standing in for vLLM)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from llmfab.api.reward_model import Preferences
from llmfab.cli import app as cli_app
from llmfab.serving.feedback import DB_WORKERS, CompletionsClient, FeedbackApp
from llmfab.serving.feedback_store import FeedbackReader, FeedbackStore, NotAFeedbackStore, export_preferences
from llmfab.training.objectives.reward.pairs import feedback_pairs, read_pairs

from .conftest import free_port, serve_command, write_service
from .fake_openai import FakeOpenAI, fake_text
from .raw_http import Reply, exchange, wait_all_closed

TOKEN = "s3cret-token"
BROWSER_DIR = Path(__file__).parent / "browser"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture
def feedback(tmp_path: Path, fake_openai: FakeOpenAI) -> Iterator[FeedbackApp]:
    store = FeedbackStore(tmp_path / "feedback.sqlite")
    store.add_prompts(["The cat", "A dog", "Rain"])
    app = FeedbackApp(store, CompletionsClient(fake_openai.url, "tiny"), token=TOKEN, port=0).start()
    yield app
    app.stop()


def request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, dict[str, str], str]:
    """One request, redirects not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    raw = None if body is None else json.dumps(body)
    conn.request(
        method, path, raw, {**({"Content-Type": "application/json"} if raw else {}), **(headers or {})}
    )
    r = conn.getresponse()
    result = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    conn.close()
    return result


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def vote_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT id, pair_id, choice, edited, voter FROM votes ORDER BY id").fetchall()


def test_store_is_in_wal_mode(feedback: FeedbackApp) -> None:
    with sqlite3.connect(feedback.store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_browser_vote_on_a_phone_lands_in_sqlite(feedback: FeedbackApp, tmp_path: Path) -> None:
    # `make tools` installs Debian chromium and the machine has node: a missing one fails, never skips.
    assert CHROMIUM.exists() and shutil.which("node"), "needs /usr/bin/chromium (make tools) and node"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR, check=True, timeout=300)
    shots = Path(os.environ.get("LLMFAB_TEST_ARTIFACTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    edited = "The cat sat on the mat, purring."
    out = subprocess.run(
        ["node", "vote.mjs", f"{feedback.url}?token={TOKEN}", str(shots), edited],
        cwd=BROWSER_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout.strip().splitlines()[-1])
    rows = vote_rows(feedback.store.path)
    assert len(rows) == 1
    vote_id, pair_id, choice, stored_edit, voter = rows[0]
    assert (vote_id, pair_id, choice, stored_edit) == (shown["vote"], shown["pair"], "a", edited)
    assert len(voter) == 32  # the random id from the voter cookie
    pair = feedback.store.pair(pair_id)
    with sqlite3.connect(feedback.store.path) as conn:
        sampling_a = json.loads(
            conn.execute("SELECT sampling_a FROM pairs WHERE id = ?", (pair_id,)).fetchone()[0]
        )
    assert pair["a"] == fake_text(pair["prompt"], sampling_a)  # A is what the endpoint sampled for A
    for name in ("feedback-phone.png", "feedback-phone-voted.png"):
        png = shots / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"screenshot: {png}")


def test_two_hundred_parallel_votes_are_all_stored(feedback: FeedbackApp) -> None:
    pair_ids = [
        feedback.store.add_pair(
            1, (f"a{i}", f"b{i}"), ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0, "top_p": 0.95})
        )
        for i in range(20)
    ]

    def vote(i: int) -> tuple[int, str]:
        status, _, body = request(
            f"{feedback.url}vote", "POST", {**BEARER, "Cookie": f"llmfab_voter=voter{i}"},
            {"pair": pair_ids[i % 20], "choice": ("a", "b", "tie")[i % 3], "edited": None},
        )  # fmt: skip
        request(f"{feedback.url}stats.json", headers=BEARER)  # readers interleaved with the writes
        return status, body

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(vote, range(200)))
    assert [s for s, _ in results] == [200] * 200, [b for s, b in results if s != 200][:3]
    rows = vote_rows(feedback.store.path)
    assert len(rows) == 200 and len({r[4] for r in rows}) == 200
    assert sorted(json.loads(b)["vote"] for _, b in results) == sorted(r[0] for r in rows)


def test_stats_report_shares_and_agreement_per_pair(feedback: FeedbackApp) -> None:
    sampling = ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0, "top_p": 0.95})
    pair = feedback.store.add_pair(1, ("x", "y"), sampling)
    for voter, choice in (("ann", "a"), ("bob", "a"), ("cy", "b"), ("dee", "a")):
        feedback.store.vote(pair, choice, voter)  # type: ignore[arg-type]
    status, _, body = request(f"{feedback.url}stats.json", headers=BEARER)
    stats = json.loads(body)
    assert status == 200 and stats["votes"] == 4 and stats["voters"] == 4
    assert stats["share"] == {"a": 0.75, "b": 0.25, "tie": 0.0}
    assert stats["agreement"] == [
        {"pair": pair, "prompt": "The cat", "votes": 4, "a": 3, "b": 1, "tie": 0, "agreement": 0.75}
    ]
    assert stats["winsBySampling"] == {"temperature 0.7, top_p 0.9": 3, "temperature 1.0, top_p 0.95": 1}
    status, _, page = request(f"{feedback.url}stats", headers=BEARER)
    assert status == 200 and "4 votes from 4 voters" in page and "75%" in page


def test_open_pairs_are_shown_to_other_voters_until_they_have_enough_votes(feedback: FeedbackApp) -> None:
    feedback.votes_per_pair = 2
    first = feedback.next_pair("ann")
    feedback.store.vote(first["id"], "a", "ann")
    assert feedback.next_pair("bob")["id"] == first["id"]  # bob is asked about ann's pair
    assert feedback.next_pair("ann")["id"] != first["id"]  # ann never twice
    feedback.store.vote(first["id"], "b", "bob")
    assert feedback.next_pair("cy")["id"] != first["id"]  # two votes: enough


def test_requests_without_the_right_token_get_401(feedback: FeedbackApp) -> None:
    url = feedback.url
    assert request(f"{url}healthz")[0] == 200  # probes need no token
    for path in ("", "pair", "stats", "stats.json"):
        assert request(f"{url}{path}")[0] == 401, path
        assert request(f"{url}{path}", headers={"Authorization": "Bearer wrong"})[0] == 401, path
        assert request(f"{url}{path}", headers={"Cookie": "llmfab_feedback_token=wrong"})[0] == 401, path
    assert request(f"{url}vote", "POST", body={"pair": 1, "choice": "a"})[0] == 401
    assert request(f"{url}?token=wrong")[0] == 401
    assert request(url, headers=BEARER)[0] == 200
    assert request(url, headers={"Authorization": f"bearer {TOKEN}"})[0] == 200  # the scheme is case-insensitive
    status, headers, _ = request(f"{url}?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"]
    assert request(f"{url}pair", headers={"Cookie": cookie})[0] == 200


def test_bad_votes_are_refused(feedback: FeedbackApp) -> None:
    assert request(f"{feedback.url}vote", "POST", BEARER, {"pair": 1, "choice": "c"})[0] == 400
    assert request(f"{feedback.url}vote", "POST", BEARER, {"choice": "a"})[0] == 400
    assert request(f"{feedback.url}vote", "POST", BEARER, {"pair": 999, "choice": "a"})[0] == 404
    assert vote_rows(feedback.store.path) == []


def test_export_writes_reward_model_pairs_skipping_ties_and_using_edits(tmp_path: Path) -> None:
    db = tmp_path / "services" / "svc" / "feedback.sqlite"
    store = FeedbackStore(db)
    store.add_prompts(["P1", "P2"])
    sampling = ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0, "top_p": 0.95})
    p1, p2 = store.add_pair(1, ("good", "bad"), sampling), store.add_pair(2, ("meh", "better"), sampling)
    store.vote(p1, "a", "ann")
    store.vote(p1, "tie", "bob")
    store.vote(p2, "b", "ann")
    store.vote(p2, "a", "bob", edited="meh, fixed")
    store.close()
    fields = Preferences(path="x.jsonl")
    keys = (fields.prompt_field, fields.chosen_field, fields.rejected_field)
    expected = [
        dict(zip(keys, ("P1", "good", "bad"), strict=True)),
        dict(zip(keys, ("P2", "better", "meh"), strict=True)),
        dict(zip(keys, ("P2", "meh, fixed", "better"), strict=True)),
    ]
    out = tmp_path / "prefs.jsonl"
    assert export_preferences(db, out) == 3
    assert [json.loads(line) for line in out.read_text().splitlines()] == expected

    cli_out = tmp_path / "cli.jsonl"
    result = CliRunner().invoke(
        cli_app, ["feedback", "export", "svc", "--out", str(cli_out)], env={"LLMFAB_HOME": str(tmp_path)}
    )
    assert result.exit_code == 0, result.output
    assert "wrote 3 preference pairs" in result.output and cli_out.read_text() == out.read_text()
    missing = CliRunner().invoke(
        cli_app, ["feedback", "export", "nope", "--out", str(cli_out)], env={"LLMFAB_HOME": str(tmp_path)}
    )
    assert missing.exit_code == 1 and "no feedback store" in missing.output


def test_serve_run_starts_the_app_beside_the_server_and_stops_it(tmp_path: Path) -> None:
    """``llmfab serve run`` with the fake server as its "vLLM" child (through LLMFAB_SERVE_PYTHON)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 128, "num_attention_heads": 2}))
    fake_python = tmp_path / "fake-python"
    fake_python.write_text(
        f'#!/bin/sh\nexec {sys.executable} {Path(__file__).parent / "fake_openai.py"} "$@"\n'
    )
    fake_python.chmod(0o755)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Only prompt"}) + "\n")
    port, feedback_port = free_port(), free_port()
    spec = {
        "model": {"path": str(model)},
        "quantization": {"method": "none"},
        "server": {"port": port, "servedModelName": "tiny"},
        "feedback": {"enabled": True, "port": feedback_port, "tokenEnv": "FB_TOKEN", "prompts": str(prompts)},
    }
    spec_file = write_service(tmp_path / "svc.yaml", "fb-svc", spec)
    env = {**os.environ, "LLMFAB_HOME": str(tmp_path / "home"), "LLMFAB_SERVE_PYTHON": str(fake_python),
           "LLMFAB_SERVE_DEVICE": "cpu", "LLMFAB_STATUS": "file", "FB_TOKEN": TOKEN}  # fmt: skip
    proc = subprocess.Popen(
        serve_command(spec_file), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    status_file = tmp_path / "home" / "services" / "fb-svc.status.json"
    try:
        deadline = time.monotonic() + 60
        status: dict[str, Any] = {}
        while time.monotonic() < deadline and "feedbackUrl" not in status:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
            if status_file.exists():
                status = json.loads(status_file.read_text())
        feedback_url = f"http://127.0.0.1:{feedback_port}/"
        assert status.get("feedbackUrl") == feedback_url and status["readyReplicas"] == 1
        code, _, body = request(f"{feedback_url}pair", headers=BEARER)
        assert code == 200 and json.loads(body)["prompt"] == "Only prompt"
        assert request(f"{feedback_url}pair")[0] == 401
        assert (tmp_path / "home" / "services" / "fb-svc" / "feedback.sqlite").is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(OSError):
        request(f"{feedback_url}healthz")


# Issue 19: the HTTP surface. Raw bytes, so that a malformed request is sent as it is.


def raw_request(
    app: FeedbackApp, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{urlsplit(app.url).port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def port_of(app: FeedbackApp) -> int:
    return int(urlsplit(app.url).port or 0)


def browser_vote_headers(app: FeedbackApp, cookie: str = f"llmfab_feedback_token={TOKEN}") -> dict[str, str]:
    """What the voting page's fetch() sends: the token cookie, JSON, the page's own Origin."""
    origin = app.url.rstrip("/")
    return {"Cookie": cookie, "Content-Type": "application/json", "Origin": origin}


def a_pair(app: FeedbackApp) -> int:
    return app.store.add_pair(
        1, ("x", "y"), ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0, "top_p": 0.95})
    )


def test_a_negative_content_length_is_refused_and_the_body_not_stored(feedback: FeedbackApp) -> None:
    """Content-Length: -1 once read the body until the client closed: 200 KiB (over the 64 KiB
    limit) were read and stored."""
    pair = a_pair(feedback)
    body = json.dumps({"pair": pair, "choice": "a", "edited": "x" * 200_000}).encode()
    headers = {**BEARER, "Content-Type": "application/json", "Content-Length": "-1"}
    reply = exchange(
        port_of(feedback), raw_request(feedback, "POST", "/vote", headers, body), half_close=True
    )
    assert reply.status == 400 and "Content-Length" in reply.text, (reply.status, reply.text)
    assert vote_rows(feedback.store.path) == []


@pytest.mark.parametrize("length", ["abc", "1e3", "0x10", "+5", " ", "5, 5", "99999999999999999999999"])
def test_a_content_length_that_is_no_count_gets_400_with_the_reason(
    feedback: FeedbackApp, length: str
) -> None:
    headers = {**BEARER, "Content-Type": "application/json", "Content-Length": length}
    reply = exchange(port_of(feedback), raw_request(feedback, "POST", "/vote", headers, b'{"pair": 1}'))
    assert reply.status is not None, "the connection was dropped without an answer"
    assert 400 <= reply.status < 500 and "Content-Length" in reply.text, (reply.status, reply.text)


def test_a_body_over_the_limit_gets_413_and_is_not_read(feedback: FeedbackApp) -> None:
    pair = a_pair(feedback)
    body = json.dumps({"pair": pair, "choice": "a", "edited": "x" * 70_000}).encode()
    headers = {**BEARER, "Content-Type": "application/json", "Content-Length": str(len(body))}
    reply = exchange(port_of(feedback), raw_request(feedback, "POST", "/vote", headers, body))
    assert reply.status == 413 and "65536" in reply.text
    chunked = {**BEARER, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:40_000], body[40_000:])) + b"0\r\n\r\n"
    reply = exchange(port_of(feedback), raw_request(feedback, "POST", "/vote", chunked, chunks))
    assert reply.status == 413 and "65536" in reply.text
    assert vote_rows(feedback.store.path) == []


@pytest.mark.parametrize(
    "body",
    [b'{"pair": 1e400, "choice": "a"}', b'{"pair": 9223372036854775808, "choice": "a"}', b'{"pair": NaN, "choice": "a"}',
     b'{"pair": -1, "choice": "a"}', b'{"pair": 1.5, "choice": "a"}', b'{"pair": "1", "choice": "a"}',
     b'{"pair": 1, "choice": "a", "edited": 5}', b"[" * 100_00, b'"just a string"', b"\xff\xfe"],
)  # fmt: skip
def test_vote_bodies_out_of_range_or_shape_get_400_naming_the_field(
    feedback: FeedbackApp, body: bytes
) -> None:
    a_pair(feedback)
    headers = {**BEARER, "Content-Type": "application/json", "Content-Length": str(len(body))}
    reply = exchange(port_of(feedback), raw_request(feedback, "POST", "/vote", headers, body))
    assert reply.status == 400, (reply.status, reply.text)
    error = json.loads(reply.body)["error"]
    assert error.startswith("body") and '"choice": "a|b|tie"' in error, error
    assert vote_rows(feedback.store.path) == []


def test_a_vote_from_another_page_is_refused(feedback: FeedbackApp) -> None:
    """CSRF: the token cookie rides along with any request to the app's host, so a page elsewhere
    (even another port of the same host, which SameSite counts as the same site) must not vote."""
    pair = a_pair(feedback)
    port = port_of(feedback)
    body = json.dumps({"pair": pair, "choice": "b"}).encode()
    own = browser_vote_headers(feedback)

    def vote(headers: dict[str, str]) -> Reply:
        return exchange(
            port, raw_request(feedback, "POST", "/vote", {**headers, "Content-Length": str(len(body))}, body)
        )

    # fetch(url, {mode: "no-cors", method: "POST", credentials: "include", body}) sends text/plain.
    no_cors = vote({**own, "Content-Type": "text/plain;charset=UTF-8", "Origin": "http://evil.example"})
    assert no_cors.status in (403, 415), no_cors.text
    no_cors_same_origin = vote({**own, "Content-Type": "text/plain;charset=UTF-8"})
    assert no_cors_same_origin.status == 415 and "application/json" in no_cors_same_origin.text
    other_port = vote({**own, "Origin": f"http://127.0.0.1:{port + 1}"})
    assert other_port.status == 403 and "Origin" in other_port.text
    for origin in (
        "null",
        "http://evil.example",
        f"https://127.0.0.1:{port}",
        f"http://127.0.0.1:{port}.evil.example",
    ):
        assert vote({**own, "Origin": origin}).status == 403, origin
    no_origin = vote({k: v for k, v in own.items() if k != "Origin"})
    assert no_origin.status == 403 and "Bearer" in no_origin.text
    assert vote_rows(feedback.store.path) == []
    assert vote(own).status == 200  # the voting page's own request
    assert [r[2] for r in vote_rows(feedback.store.path)] == ["b"]


def test_behind_a_tls_proxy_the_origin_is_https_and_the_cookie_secure(feedback: FeedbackApp) -> None:
    port = port_of(feedback)
    tls = {"X-Forwarded-Proto": "https"}
    reply = exchange(port, raw_request(feedback, "GET", f"/?token={TOKEN}", tls))
    assert reply.status == 303 and "Secure" in reply.headers["set-cookie"].split("; ")
    assert "max-age=2592000" in reply.headers["set-cookie"].lower()  # 30 days, only over TLS
    reply = exchange(port, raw_request(feedback, "GET", f"/?token={TOKEN}"))
    assert reply.status == 303 and "Secure" not in reply.headers["set-cookie"].split("; ")

    pair = a_pair(feedback)
    body = json.dumps({"pair": pair, "choice": "a"}).encode()
    headers = {
        **browser_vote_headers(feedback),
        "Origin": f"https://127.0.0.1:{port}",
        "Content-Length": str(len(body)),
    }
    no_proxy_word = exchange(port, raw_request(feedback, "POST", "/vote", headers, body))
    assert no_proxy_word.status == 403 and "X-Forwarded-Proto" in no_proxy_word.text
    reply = exchange(port, raw_request(feedback, "POST", "/vote", {**headers, **tls}, body))
    assert reply.status == 200, reply.text


def test_the_token_redirect_stays_on_the_app(feedback: FeedbackApp) -> None:
    port = port_of(feedback)
    for path, location in (
        ("//evil.example/?token=", "/evil.example/"),
        ("/%0d%0aX-Evil:1?token=", "/%0d%0ax-evil:1"),
    ):
        reply = exchange(port, raw_request(feedback, "GET", path + TOKEN))
        assert (
            reply.status == 303
            and reply.headers["location"].lower() == location
            and "x-evil" not in reply.headers
        )


def test_slow_clients_do_not_hold_threads_and_are_closed_after_the_read_timeout(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """200 connections that send half a request line, and 20 that send their headers but not the
    body: a normal request still answers at once, the app's threads do not grow with them, and each
    is closed once the read timeout has passed."""
    store = FeedbackStore(tmp_path / "feedback.sqlite")
    store.add_prompts(["The cat"])
    app = FeedbackApp(
        store, CompletionsClient(fake_openai.url, "tiny"), token=TOKEN, port=0, read_timeout=2.0
    )
    app.start()
    threads_before = threading.active_count()
    slow: list[socket.socket] = []
    opened: list[float] = []
    try:
        for i in range(220):
            sock = socket.create_connection(("127.0.0.1", port_of(app)), timeout=5)
            if i < 200:
                sock.sendall(b"GET /pa")
            else:
                sock.sendall(raw_request(app, "POST", "/vote", {**BEARER, "Content-Type": "application/json",
                                                                 "Content-Length": "100"}, b"{"))  # fmt: skip
            slow.append(sock)
            opened.append(time.monotonic())
        reply = exchange(port_of(app), raw_request(app, "GET", "/stats.json", BEARER), timeout=5)
        # Answered while 220 connections hang, well before any of them times out (a wall-clock
        # bound far from the read timeout: a loaded CI core stays far below it).
        assert reply.status == 200 and reply.seconds < app.read_timeout / 2, reply.seconds
        assert threading.active_count() - threads_before <= DB_WORKERS + 2  # not one per connection
        closed = wait_all_closed(slow, deadline=time.monotonic() + app.read_timeout + 10)
        held = [when - start for (when, _), start in zip(closed, opened, strict=True)]
        assert app.read_timeout - 0.1 <= min(held) <= max(held) <= app.read_timeout + 5, held
        assert {got for _, got in closed[:200]} == {b""}  # half a request line: nothing to answer
        assert all(
            got.startswith(b"HTTP/1.1 408") and b"not received within 2 s" in got for _, got in closed[200:]
        )
        assert exchange(port_of(app), raw_request(app, "GET", "/healthz")).status == 200
    finally:
        for sock in slow:
            sock.close()
        app.stop()


def filled_store(db: Path) -> None:
    store = FeedbackStore(db)
    store.add_prompts(["P1"])
    sampling = ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0, "top_p": 0.95})
    store.vote(store.add_pair(1, ("good", "bad"), sampling), "a", "ann")
    store.close()


def export_cli(home: Path, out: Path) -> Any:
    return CliRunner().invoke(
        cli_app, ["feedback", "export", "svc", "--out", str(out)], env={"LLMFAB_HOME": str(home)}
    )


@pytest.mark.parametrize("content", ["garbage", "other-sqlite", "empty"])
def test_export_refuses_a_file_that_is_no_feedback_store_and_changes_nothing(
    tmp_path: Path, content: str
) -> None:
    db = tmp_path / "services" / "svc" / "feedback.sqlite"
    db.parent.mkdir(parents=True)
    if content == "garbage":
        db.write_bytes(b"not a database\n" * 100)
    elif content == "other-sqlite":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    else:
        db.write_bytes(b"")
    before = db.read_bytes()
    out = tmp_path / "prefs.jsonl"
    out.write_text("the previous export\n")
    result = export_cli(tmp_path, out)
    assert result.exit_code == 1 and "not a llmfab feedback store" in result.output, result.output
    assert str(db) in result.output.replace("\n", "")
    assert db.read_bytes() == before and out.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefs.jsonl", "services"]


def test_a_store_whose_table_is_a_view_is_refused(tmp_path: Path) -> None:
    """``PRAGMA table_info`` describes a view as it does a table, so a file whose ``votes`` is a
    view (whose query could be a recursive one that never ends) passed the check and was read."""
    db = tmp_path / "services" / "svc" / "feedback.sqlite"
    db.parent.mkdir(parents=True)
    filled_store(db)
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE votes RENAME TO real_votes")
        conn.execute("CREATE VIEW votes AS SELECT * FROM real_votes")
    out = tmp_path / "prefs.jsonl"
    result = export_cli(tmp_path, out)
    assert result.exit_code == 1, result.output
    assert "not a llmfab feedback store (no votes table (a view stands in its place))" in result.output.replace(
        "\n", "")
    assert not out.exists()


def test_the_app_refuses_to_write_into_another_programs_database(tmp_path: Path) -> None:
    db = tmp_path / "feedback.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    before = db.read_bytes()
    with pytest.raises(NotAFeedbackStore, match="no prompts, pairs, votes"):
        FeedbackStore(db)
    assert db.read_bytes() == before


def test_readers_open_the_store_read_only_and_read_it_mid_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export and a RewardModel only read the store: every connection they open is ``mode=ro`` (the
    store has exactly one writer, the app), and they read while the app is in the middle of a write."""
    db = tmp_path / "services" / "svc" / "feedback.sqlite"
    filled_store(db)
    opened: list[str] = []
    real_connect = sqlite3.connect

    def recording_connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(str(database))
        return real_connect(database, *args, **kwargs)

    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the app, mid-write
    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    try:
        start = time.monotonic()
        assert export_preferences(db, tmp_path / "a.jsonl") == 1
        prefs = Preferences.model_validate({"inferenceService": "svc", "minPairs": 1})
        assert [p.chosen for p in feedback_pairs(db, "svc", prefs)] == ["good"]
        assert time.monotonic() - start < 5  # the store's busy timeout is 10 s
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    store_connections = [c for c in opened if c != ":memory:"]
    assert store_connections and all(c.endswith("?mode=ro") for c in store_connections), store_connections


def test_export_replaces_the_output_whole(tmp_path: Path) -> None:
    db = tmp_path / "services" / "svc" / "feedback.sqlite"
    filled_store(db)
    out = tmp_path / "prefs.jsonl"
    out.write_text("the previous export\n")
    inode = out.stat().st_ino
    result = export_cli(tmp_path, out)
    assert result.exit_code == 0, result.output
    assert out.stat().st_ino != inode, "written in place: a reader could see half an export"
    assert json.loads(out.read_text())["chosen"] == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefs.jsonl", "services"]
    itself = export_cli(tmp_path, db)
    assert itself.exit_code == 1 and "the feedback store itself" in itself.output
    assert FeedbackReader(db).votes()


def test_export_keeps_each_pair_on_one_line_for_the_reward_models_reader(tmp_path: Path) -> None:
    """Found by the export fuzzer: U+0085, U+2028 and U+2029 (text pasted from the web) are line
    breaks to str.splitlines(), which the RewardModel's JSONL reader splits with; written raw they
    cut a pair in two."""
    db = tmp_path / "feedback.sqlite"
    store = FeedbackStore(db)
    store.add_prompts(["P\u2028Q"])
    sampling = ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0, "top_p": 0.95})
    store.vote(store.add_pair(1, ("good\x85", "bad\u2029"), sampling), "a", "ann")
    store.close()
    out = tmp_path / "prefs.jsonl"
    assert export_preferences(db, out) == 1
    prefs = Preferences.model_validate({"path": str(out), "minPairs": 1})
    [pair] = read_pairs([out], prefs)
    assert (pair.prompt, pair.chosen, pair.rejected) == ("P\u2028Q", "good\x85", "bad\u2029")
