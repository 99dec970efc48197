"""The feedback app's HTTP surface, fuzzed (issue 19; ``llmfab feedback export``: test_feedback_export.py).

Against a real app on loopback (real sockets, the bytes sent as drawn): every answer is a 2xx, 3xx or
4xx with a reason, never a 5xx, a traceback, a hang (each wait is bounded) or a connection dropped
without an answer; nothing is logged as an error; and the store changes only on a valid, authorized,
same-origin vote. A request is drawn whole and then up to three of its parts are broken (the method,
the path, a ``?token=``, the credentials, the Origin, the Content-Type, the framing, the body), so
that the valid votes, and the requests one mistake away from one, are both drawn often. Each part's
label says what the app must make of it; where the bytes leave it open (a junk cookie beside the
token, a body longer than its Content-Length) the oracle says "unsure" and only asks that the answer
and the store agree: a 200 means the vote is stored, anything else means the store is as it was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from llmfab.serving.feedback import CompletionsClient, FeedbackApp
from llmfab.serving.feedback_store import FeedbackStore
from tests.serving.fake_openai import FakeOpenAI
from tests.serving.raw_http import Reply, exchange

from .feedback_requests import OTHER, OWN, PAIRS, TOKEN, Request, expected, mutated, requests, vote

READ_TIMEOUT = 0.5  # the app's; a request the client leaves unfinished costs this much
SAMPLING = ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0, "top_p": 0.95})


class ErrorRecords(logging.Handler):
    """Every record at ERROR or above, from any logger (aiohttp's, the app's)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Running:
    app: FeedbackApp
    port: int
    errors: ErrorRecords

    def snapshot(self) -> tuple[list[tuple[Any, ...]], int]:
        with contextlib.closing(sqlite3.connect(f"file:{self.app.store.path}?mode=ro", uri=True)) as db:
            votes = db.execute("SELECT * FROM votes ORDER BY id").fetchall()
            return votes, int(db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0])


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    fake = FakeOpenAI().start()
    store = FeedbackStore(tmp_path_factory.mktemp("fuzz-feedback") / "feedback.sqlite")
    store.add_prompts(["The cat", "A dog"])
    assert [store.add_pair(1, (f"a{i}", f"b{i}"), SAMPLING) for i in range(3)] == PAIRS
    app = FeedbackApp(
        store, CompletionsClient(fake.url, "tiny"), token=TOKEN, port=0, read_timeout=READ_TIMEOUT
    )
    errors = ErrorRecords()
    logging.getLogger().addHandler(errors)
    app.start()
    try:
        yield Running(app, int(app.url.rsplit(":", 1)[1].strip("/")), errors)
    finally:
        app.stop()
        fake.stop()
        logging.getLogger().removeHandler(errors)


def assert_reasoned(reply: Reply, method: str) -> int:
    """The answer's status, once it is shown to be an answer with a reason (and no traceback)."""
    assert reply.status is not None, "the connection was dropped without an answer"
    assert 200 <= reply.status < 500, (reply.status, reply.text[:500])
    assert "Traceback" not in reply.text and 'File "' not in reply.text, reply.text[:500]
    if reply.status >= 400 and method != "HEAD":
        assert reply.body.strip(), f"{reply.status} without a reason"
    return reply.status


# Issue 19's findings: Content-Length -1 (a 200 KiB edit read and stored) or no number, a pair id of
# 1e400 or 2**63, and votes from another page (a no-cors fetch, another port of the host, no Origin).
PAGE_COOKIE, JSON = ("Cookie", f"llmfab_feedback_token={TOKEN}"), ("Content-Type", "application/json")
BIG_EDIT = json.dumps({"pair": 1, "choice": "a", "edited": "x" * 200_000}).encode()
NEGATIVE_LENGTH = vote(body=BIG_EDIT, framing="bad:-1", labels={"auth": "valid", "framing": "invalid"})
LENGTH_NO_NUMBER = vote(framing="bad:abc", labels={"auth": "valid", "framing": "invalid"})
PAIR_INFINITE = vote(body=b'{"pair": 1e400, "choice": "a"}', labels={"auth": "valid", "body": "invalid"})
PAIR_2_63 = vote(
    body=b'{"pair": 9223372036854775808, "choice": "a"}', labels={"auth": "valid", "body": "invalid"}
)
FROM_THE_PAGE = vote(cookie=True)
NO_CORS = vote(
    labels={"auth": "valid", "content-type": "invalid"},
    headers=[
        PAGE_COOKIE,
        ("Origin", "http://evil.example"),
        ("Host", OWN),
        ("Content-Type", "text/plain;charset=UTF-8"),
    ],
)
OTHER_PORT = vote(
    labels={"auth": "valid", "origin": "invalid"},
    headers=[PAGE_COOKIE, ("Origin", f"http://{OTHER}"), ("Host", OWN), JSON],
)
# The fuzzer's: a client that half-closes before its body is in (logged as a 500 with a traceback).
LEFT_MID_BODY = vote(framing="short", half_close=True, labels={"auth": "valid", "framing": "invalid"})
COOKIE_NO_ORIGIN = vote(
    labels={"auth": "valid", "origin": "invalid"}, headers=[PAGE_COOKIE, ("Host", OWN), JSON]
)


@example(NEGATIVE_LENGTH)
@example(LENGTH_NO_NUMBER)
@example(PAIR_INFINITE)
@example(PAIR_2_63)
@example(FROM_THE_PAGE)
@example(NO_CORS)
@example(OTHER_PORT)
@example(COOKIE_NO_ORIGIN)
@example(LEFT_MID_BODY)
@given(req=requests())
def test_every_request_gets_a_reasoned_answer_and_only_a_valid_vote_changes_the_store(
    running: Running, req: Request
) -> None:
    before = running.snapshot()
    reply = exchange(
        running.port, req.raw(running.port), timeout=READ_TIMEOUT + 10, half_close=req.half_close
    )
    after = running.snapshot()
    assert not running.errors.records, [r.getMessage() for r in running.errors.records]
    outcome = expected(req)
    event(f"{outcome}: {reply.status}")
    if reply.status is None and req.half_close:  # the client left before its body was in
        assert after[0] == before[0]
        return
    status = assert_reasoned(reply, req.method)
    if outcome == "stored":
        assert status == 200, (req.labels, reply.status, reply.text)
    plain_vote = (
        req.method == "POST" and req.labels.get("path", "valid") == "valid" and "query" not in req.labels
    )
    if outcome == "refused" and plain_vote:
        assert 400 <= status < 500, (req.labels, status, reply.text)
    if not is_vote_accepted(reply, req):
        assert after[0] == before[0], (req.labels, reply.status, reply.text)
        may_make_pairs = req.labels["auth"] != "invalid" and req.method in ("GET", "HEAD")
        assert after[1] == before[1] or may_make_pairs, "a pair was made for a request that may not make one"
        return
    assert outcome != "refused", (req.labels, reply.text)
    if outcome == "stored":
        vote_id = json.loads(reply.body)["vote"]
        sent = json.loads(req.body)
        row = next(r for r in after[0] if r[0] == vote_id)
        assert (row[1], row[2], row[3]) == (sent["pair"], sent["choice"], sent.get("edited") or None)
        if req.voter is not None:
            assert row[4] == req.voter


def is_vote_accepted(reply: Reply, req: Request) -> bool:
    if reply.status != 200 or req.method != "POST":
        return False
    with contextlib.suppress(ValueError):
        answer = json.loads(reply.body)
        return isinstance(answer, dict) and answer.get("ok") is True and "vote" in answer
    return False


CREDENTIALS = (f"Bearer {TOKEN}".encode(), f"llmfab_feedback_token={TOKEN}".encode(), f'="{TOKEN}"'.encode())


# The fuzzer's: no HTTP version after the path (aiohttp answers as HTTP/0.9, with a status and a reason).
@example(raw=b"POST /HTTP/1.1\r\nConnection: close\r\nAuthorization: Bearer fuzz-token\r\nHost: {own}\r\n"
             b'Content-Type: application/json\r\nContent-Length: 26\r\n\r\n{"pair": 1, "choice": "a"}')  # fmt: skip
@given(raw=mutated() | st.binary(max_size=300))
def test_mangled_bytes_get_a_reasoned_answer_or_are_closed_at_the_read_timeout(
    running: Running, raw: bytes
) -> None:
    before = running.snapshot()
    raw = raw.replace(OWN.encode(), f"127.0.0.1:{running.port}".encode())
    reply = exchange(running.port, raw, timeout=READ_TIMEOUT + 10)
    after = running.snapshot()
    assert not running.errors.records, [r.getMessage() for r in running.errors.records]
    event(f"{reply.status}")
    if reply.status is None:  # an unfinished request: closed by the read timeout, not dropped at once
        assert reply.seconds >= READ_TIMEOUT - 0.05, reply
        assert after == before
        return
    assert_reasoned(reply, raw.split(b" ", 1)[0].decode("latin-1"))
    if after[0] != before[0]:
        assert reply.status == 200 and any(c in raw for c in CREDENTIALS), (reply.status, reply.text)
