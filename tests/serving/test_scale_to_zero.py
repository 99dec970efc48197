"""Scale to zero on one machine with the real vLLM: ``llmfab serve run`` of a service with
``spec.autoscaling.minReplicas: 0`` holds the port itself, starts vLLM on the first request and
stops it after ``idleSeconds``.

The module's service (idleSeconds 5, the feedback app on) is started once; its tests run in
order: asleep, woken, asleep again, woken by a burst, stopped by SIGTERM. Each cold start of vLLM
takes ~30 s on an idle machine of this kind (minutes on a busy one), so the module has two. Every
wait polls the status file or the process table with a bound.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import TinySetup
from .wake_service import COLD_START_BOUND, Service, call, gone, metric, start_service, stop, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.serve]

IDLE_SECONDS = 5
BURST = 16


def complete(service: Service, i: int = 0, stream: bool = False) -> tuple[int, bytes]:
    body = {"model": "tiny", "prompt": f"The river {i}", "max_tokens": 8, "temperature": 0, "ignore_eos": True,
            "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}  # fmt: skip
    code, _, raw = call(f"{service.url}/completions", body)
    return code, raw


def served_tokens(raw: bytes, stream: bool) -> int:
    """Completion tokens in an answer: its ``usage`` (a streamed one's is in its last event before
    ``[DONE]``; the events themselves may be fewer than the tokens, as the detokenizer holds bytes)."""
    if not stream:
        return int(json.loads(raw)["usage"]["completion_tokens"])
    events = [line.removeprefix("data: ") for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    return int(json.loads(events[-2])["usage"]["completion_tokens"])


def llmfab_get(service: Service) -> str:
    env = {**os.environ, "LLMFAB_HOME": str(service.root), "COLUMNS": "250"}
    out = subprocess.run([sys.executable, "-m", "llmfab", "get", "InferenceService", service.name], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return next(line for line in out.stdout.splitlines() if service.name in line)


@pytest.fixture(scope="module")
def service(tiny: TinySetup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tiny, tmp_path_factory.mktemp("scale-to-zero"), "sleepy",
                        {"idleSeconds": IDLE_SECONDS, "coldStartTimeoutSeconds": COLD_START_BOUND}, feedback=True)  # fmt: skip
    yield svc
    stop(svc)


def test_at_start_no_vllm_runs_and_get_shows_idle(service: Service) -> None:
    assert service.vllm() == []
    status = service.status()
    assert status["phase"] == "Running" and status["replicas"] == 0 and status["readyReplicas"] == 0
    assert status["scale"]["coldStarts"] == 0
    row = llmfab_get(service)
    assert "Running" in row and "State=Idle" in row and f"URL={service.url}" in row


def test_the_first_request_wakes_vllm_and_is_answered_streaming_too(service: Service) -> None:
    code, raw = complete(service)
    assert code == 200, raw
    assert served_tokens(raw, stream=False) == 8
    scale = service.status()["scale"]
    assert scale["state"] == "Ready" and scale["coldStarts"] == 1 and scale["lastColdStartSeconds"] > 0
    assert any("vllm.entrypoints.openai.api_server" in " ".join(p.cmdline()) for p in service.vllm())

    # Streaming: events relayed one by one as vLLM writes them.
    body = {"model": "tiny", "prompt": "A dog", "max_tokens": 240, "ignore_eos": True, "stream": True}
    req = urllib.request.Request(f"{service.url}/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=COLD_START_BOUND) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        first = r.readline()
        assert first.startswith(b"data: {")
        # Relayed as vLLM sends it: chunked, with no length known up front (a proxy that read the
        # whole body first would know it). Whether vLLM is still generating when the first event is
        # read depends on how fast this machine is (on a quiet one it is not), so that is not asserted.
        assert r.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.headers
        assert "State=Ready" in llmfab_get(service)  # in flight: it cannot go idle now
        events = [first.decode().strip(), *(line.decode().strip() for line in r if line.strip())]
    assert events[-1] == "data: [DONE]" and len(events) > 100
    assert service.status()["scale"]["coldStarts"] == 1


def test_after_idle_seconds_vllm_is_gone_and_status_says_idle(service: Service) -> None:
    vllm = service.vllm()
    assert vllm, "vLLM should still run right after the previous test"
    wait_until(lambda: service.state() == "Idle", "Idle after idleSeconds", service, timeout=IDLE_SECONDS + 60)
    assert gone(vllm), [p.pid for p in vllm]
    assert service.vllm() == []
    status = service.status()
    assert status["replicas"] == 0 and status["readyReplicas"] == 0 and status["scale"]["coldStarts"] == 1
    assert f"idleSeconds ({IDLE_SECONDS} s): vLLM stopped" in status["message"]
    assert "State=Idle" in llmfab_get(service)
    assert metric(service, "llmfab_serve_replicas") == 0 and metric(service, "llmfab_serve_cold_starts_total") == 1
    events = [json.loads(line)["reason"] for line in
              (service.root / "services" / f"{service.name}.events.jsonl").read_text().splitlines()]  # fmt: skip
    assert events[-3:] == ["Waking", "Ready", "ScaledToZero"]


def test_a_burst_at_a_sleeping_service_is_all_answered_and_the_feedback_app_wakes_it_too(service: Service) -> None:
    assert service.state() == "Idle" and service.feedback is not None
    with ThreadPoolExecutor(BURST + 1) as pool:
        answers = [pool.submit(complete, service, i, i % 2 == 0) for i in range(BURST)]
        pair = pool.submit(call, f"{service.feedback}/pair")
        # The feedback app's pair is two completions through the proxy: all 18 wait for one wake.
        wait_until(lambda: metric(service, "llmfab_serve_requests_held") == BURST + 2, "the burst held while waking",
                   service, timeout=60)  # fmt: skip
        results = [a.result() for a in answers]
        pair_code, _, pair_raw = pair.result()
    assert [code for code, _ in results] == [200] * BURST
    assert [served_tokens(raw, i % 2 == 0) for i, (_, raw) in enumerate(results)] == [8] * BURST
    assert pair_code == 200 and {"a", "b"} <= set(json.loads(pair_raw)), pair_raw
    assert service.status()["scale"]["coldStarts"] == 2
    assert metric(service, "llmfab_serve_requests_held") == 0
    assert metric(service, "llmfab_serve_proxied_requests_total") >= BURST + 2


def test_sigterm_stops_the_workload_and_vllm_mid_request(service: Service) -> None:
    body = {"model": "tiny", "prompt": "A cat", "max_tokens": 240, "ignore_eos": True, "stream": True}
    req = urllib.request.Request(f"{service.url}/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=COLD_START_BOUND) as r:
        r.readline()
        vllm = service.vllm()
        assert vllm
        assert stop(service, signal.SIGTERM) == 0, service.output()
    assert gone(vllm), [p.pid for p in vllm]
    status = service.status()
    assert status["phase"] == "Succeeded" and status["readyReplicas"] == 0 and "scale" not in status
    assert "server stopped (SIGTERM)" in service.output()


def test_a_wake_longer_than_cold_start_timeout_gets_503_with_retry_after_and_sigint_stops_the_wake(
    tiny: TinySetup, tmp_path: Path
) -> None:
    svc = start_service(tiny, tmp_path, "impatient", {"idleSeconds": 60, "coldStartTimeoutSeconds": 1})
    try:
        code, headers, raw = call(f"{svc.url}/completions", {"model": "tiny", "prompt": "x", "max_tokens": 4})
        assert code == 503, raw
        assert int(headers["Retry-After"]) >= 1
        error = json.loads(raw)["error"]
        assert "spec.autoscaling.coldStartTimeoutSeconds (1 s)" in error["message"] and error["code"] == 503
        assert svc.state() == "Waking"  # vLLM goes on starting for the next request
        wait_until(lambda: svc.vllm(), "vLLM's process", svc, timeout=30)
        vllm = svc.vllm()
    finally:
        assert stop(svc, signal.SIGINT) == 0, svc.output()
    assert gone(vllm), [p.pid for p in vllm]
    assert "server stopped (SIGINT)" in svc.output()
