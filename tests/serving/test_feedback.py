"""The human-feedback app (``spec.feedback``) against a fake OpenAI completions server on loopback:
a real browser votes, parallel votes are all kept, auth, export to preference pairs, and the wiring
into ``llmfab serve run`` (with the fake server standing in for vLLM)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
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
from llmfab.serving.feedback import CompletionsClient, FeedbackApp
from llmfab.serving.feedback_store import FeedbackStore, export_preferences

from .conftest import free_port, serve_command, write_service
from .fake_openai import FakeOpenAI, fake_text

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
