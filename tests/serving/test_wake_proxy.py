"""The wake proxy and the on-demand server in front of a real process standing in for vLLM.

``gated_upstream.py`` runs as the server (its own process group, started and stopped by the same
``ServerProcess`` that runs vLLM), so every test takes seconds; ``test_scale_to_zero.py`` does the
same against the real vLLM through ``llmfab serve run``. Waits poll a condition with a bound.
"""

from __future__ import annotations

import http.client
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from llmfab.api import parse_resource
from llmfab.api.common import Phase
from llmfab.api.inference_service import ScaleStatus
from llmfab.serving.chat import ChatError, chat_loop, service_url
from llmfab.serving.on_demand import OnDemandServer, WakeSettings
from llmfab.serving.scale_metrics import ScaleMetrics
from llmfab.serving.vllm_args import LaunchPlan
from llmfab.serving.wake_proxy import WakeProxy
from llmfab.serving.workload import ServerProcess
from llmfab.status import FileStatusReporter

from .conftest import free_port
from .wake_service import call
from .wake_service import metric_value as metric

UPSTREAM = Path(__file__).with_name("gated_upstream.py")


@dataclass
class Proxied:
    url: str
    proxy: WakeProxy
    server: OnDemandServer
    changes: list[tuple[str, str]] = field(default_factory=list)

    def states(self) -> list[str]:
        return [state for state, _ in self.changes]


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Proxied]]:
    proxies: list[WakeProxy] = []

    def make(*upstream: str, idle: float = 60.0, cold_start_timeout: float = 30.0) -> Proxied:
        log = tmp_path / f"server-{len(proxies)}.log"

        def launch() -> tuple[ServerProcess, str]:
            port = free_port()
            plan = LaunchPlan(argv=[sys.executable, str(UPSTREAM), "--port", str(port), *upstream])
            return ServerProcess(plan, log, echo=False), f"http://127.0.0.1:{port}"

        changes: list[tuple[str, str]] = []

        def on_change(status: ScaleStatus, reason: str, message: str, warning: bool) -> None:
            changes.append((status.state, reason))

        metrics = ScaleMetrics("fake")
        server = OnDemandServer(launch, WakeSettings(idle_seconds=idle, start_timeout=30, stop_grace=5), metrics,
                                on_change)  # fmt: skip
        port = free_port()
        proxies.append(WakeProxy(server, metrics, "127.0.0.1", port, cold_start_timeout).start())
        return Proxied(f"http://127.0.0.1:{port}", proxies[-1], server, changes)

    yield make
    for proxy in proxies:
        proxy.stop()


def test_a_request_wakes_the_server_and_idle_stops_its_whole_process_group(start: Callable[..., Proxied]) -> None:
    p = start("--grandchild", idle=1.0)
    assert p.server.status.state == "Idle" and metric(p.url, "llmfab_serve_replicas") == 0
    code, _, body = call(f"{p.url}/echo")
    assert code == 200
    pids = json.loads(body)
    assert alive(pids["pid"]) and alive(pids["grandchild"])
    assert p.server.status.state == "Ready" and p.server.status.cold_starts == 1
    assert p.server.status.last_cold_start_seconds is not None and p.server.status.last_cold_start_time
    wait_until(lambda: p.server.status.state == "Idle", "back to Idle after idleSeconds")
    assert not alive(pids["pid"]) and not alive(pids["grandchild"]), "the server's process group outlived the stop"
    assert p.changes == [("Waking", "Waking"), ("Ready", "Ready"), ("Idle", "ScaledToZero")]
    assert metric(p.url, "llmfab_serve_replicas") == 0 and metric(p.url, "llmfab_serve_cold_starts_total") == 1
    code, _, body = call(f"{p.url}/echo")  # and wakes again
    assert code == 200 and json.loads(body)["pid"] != pids["pid"] and p.server.status.cold_starts == 2


def test_health_and_metrics_answer_without_waking_the_server(start: Callable[..., Proxied]) -> None:
    p = start()
    assert call(f"{p.url}/health")[0] == 200
    text = call(f"{p.url}/metrics")[2].decode()
    for name in ("llmfab_serve_cold_starts_total", "llmfab_serve_cold_start_seconds_count",
                 "llmfab_serve_requests_held", "llmfab_serve_replicas", "llmfab_serve_wake_timeouts_total"):
        assert f'{name}{{model_name="fake"}} 0.0' in text, name
    assert "fake_upstream_up" not in text and p.changes == []
    call(f"{p.url}/echo")
    assert "fake_upstream_up 1.0" in call(f"{p.url}/metrics")[2].decode()  # the server's own series follow
    assert 'llmfab_serve_proxied_requests_total{code="200",model_name="fake"} 1.0' in call(f"{p.url}/metrics")[2].decode()


def test_method_path_query_headers_and_body_are_forwarded_without_hop_by_hop_fields(
    start: Callable[..., Proxied],
) -> None:
    p = start()
    host, port = p.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)  # urllib would replace Connection
    conn.request("POST", "/echo/a%2Fb?x=1&y=%20z", json.dumps({"k": "v"}),
                 {"Authorization": "Bearer t", "Connection": "keep-alive, X-Drop", "X-Drop": "1", "X-Keep": "1",
                  "Proxy-Authorization": "secret", "TE": "trailers"})  # fmt: skip
    response = conn.getresponse()
    code, seen = response.status, json.loads(response.read())
    conn.close()
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert code == 200 and seen["method"] == "POST" and seen["path"] == "/echo/a%2Fb?x=1&y=%20z"
    assert json.loads(seen["body"]) == {"k": "v"}
    assert headers["authorization"] == "Bearer t" and headers["x-keep"] == "1"
    assert "proxy-authorization" not in headers and "te" not in headers and "x-drop" not in headers
    assert headers.get("connection", "keep-alive") == "keep-alive"  # the proxy's own connection, not the client's


def test_a_streamed_answer_reaches_the_client_before_the_server_has_finished_it(start: Callable[..., Proxied]) -> None:
    p = start()
    host, port = p.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    conn.request("POST", "/v1/completions", json.dumps({"stream": True}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
    first = response.readline()
    assert b'"first"' in first  # the server now waits for the gate: this event was relayed on its own
    assert call(f"{p.url}/gate", {})[0] == 200
    rest = response.read().decode()
    assert '"second"' in rest and rest.rstrip().endswith("data: [DONE]")
    conn.close()


def test_requests_during_a_wake_are_held_and_all_answered(start: Callable[..., Proxied]) -> None:
    p = start("--ready-after", "1.5")
    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(call, f"{p.url}/echo") for _ in range(32)]
        wait_until(lambda: metric(p.url, "llmfab_serve_requests_held") == 32, "32 requests held while waking")
        codes = [f.result()[0] for f in futures]
    assert codes == [200] * 32
    assert p.server.status.cold_starts == 1 and metric(p.url, "llmfab_serve_requests_held") == 0


def test_a_wake_slower_than_cold_start_timeout_is_answered_503_with_retry_after(
    start: Callable[..., Proxied],
) -> None:
    p = start("--ready-after", "4", cold_start_timeout=1.0)
    code, headers, raw = call(f"{p.url}/v1/completions", {"prompt": "x"})
    assert code == 503  # the server answers /health 4 s after its start: this request was not held for it
    assert int(headers["Retry-After"]) >= 1
    error = json.loads(raw)["error"]
    assert "spec.autoscaling.coldStartTimeoutSeconds (1 s)" in error["message"] and error["code"] == 503
    assert metric(p.url, "llmfab_serve_wake_timeouts_total") == 1
    wait_until(lambda: p.server.status.state == "Ready", "the wake goes on without the request")
    assert call(f"{p.url}/v1/completions", {"prompt": "x"})[0] == 200


def test_a_server_that_dies_while_starting_gives_502_with_its_log_and_the_next_request_retries(
    start: Callable[..., Proxied],
) -> None:
    p = start("--exit-at-start", "3")
    code, _, raw = call(f"{p.url}/v1/completions", {"prompt": "x"})
    message = json.loads(raw)["error"]["message"]
    assert code == 502 and "exited with code 3 during start-up" in message and "refusing to start" in message
    assert p.server.status.state == "Idle" and p.server.status.cold_starts == 0
    assert call(f"{p.url}/v1/completions", {"prompt": "x"})[0] == 502
    assert p.states() == ["Waking", "Idle", "Waking", "Idle"]


def test_a_server_that_exits_while_ready_goes_back_to_idle(start: Callable[..., Proxied]) -> None:
    p = start()
    pid = json.loads(call(f"{p.url}/echo")[2])["pid"]
    psutil.Process(pid).kill()
    wait_until(lambda: p.server.status.state == "Idle", "Idle after the server died")
    assert p.changes[-1] == ("Idle", "ServerExited")
    assert call(f"{p.url}/echo")[0] == 200 and p.server.status.cold_starts == 2


def test_stopping_the_proxy_stops_the_server(start: Callable[..., Proxied]) -> None:
    """What the workload does on SIGINT/SIGTERM."""
    p = start("--grandchild")
    pids = json.loads(call(f"{p.url}/echo")[2])
    p.proxy.stop()
    assert not p.proxy.alive()
    assert not alive(pids["pid"]) and not alive(pids["grandchild"])


def test_llmfab_chat_accepts_a_sleeping_service_and_wakes_it(start: Callable[..., Proxied], tmp_path: Path) -> None:
    p = start("--ready-after", "1")
    svc = parse_resource({"apiVersion": "llmfab.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "napper"},
                          "spec": {"model": {"path": "m"}, "release": {"license": "apache-2.0"},
                                   "autoscaling": {"minReplicas": 0}}})  # fmt: skip
    reporter = FileStatusReporter(svc, tmp_path)
    reporter.phase(Phase.RUNNING, "Serving", "asleep", url=f"{p.url}/v1", readyReplicas=0,
                   scale=p.server.status.model_dump(mode="json", by_alias=True, exclude_none=True))  # fmt: skip
    out = io.StringIO()
    assert chat_loop("napper", root=tmp_path, stdin=io.StringIO("hi\n/quit\n"), stdout=out) == 0
    assert "napper is scaled to zero" in out.getvalue() and "hello from fake" in out.getvalue()
    assert p.server.status.cold_starts == 1
    reporter.progress(scale=None)  # neither ready nor scaled to zero: not serving
    with pytest.raises(ChatError, match="is not serving"):
        service_url("napper", tmp_path)
