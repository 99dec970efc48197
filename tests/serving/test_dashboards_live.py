"""Every panel of every shipped dashboard, queried against a real Prometheus scraping real parts.

Prometheus (Debian's 2.42, scrape interval 1 s) scrapes the session's vLLM server (the tiny GPTQ
model), a service scaled to zero (``llmfab serve run`` with ``spec.autoscaling``: the wake proxy's
``llmfab_serve_*``, woken once during the traffic), a real ``llmfab train run`` on a copy of the
tiny Dataset (its rank-0 exporter), and stand-ins for the operator's endpoint and the KEDA
interceptor's (``fake_operator_exporter.py``: the operator's own metrics module, fed by hand,
because the operator needs an API server). After a burst of completions each
panel's queries go through ``/api/v1/query_range`` with the dashboard's variables expanded as
Grafana expands them on opening it; a panel that draws nothing fails. Each dashboard is drawn into
a PNG under ``$LLMFAB_TEST_ARTIFACTS`` (else the test's temporary directory) for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfab.monitoring import preview
from llmfab.monitoring.dashboards import DASHBOARDS, TTFT_SLO_CHOICES
from llmfab.training.components.metrics import CUDA_GAUGES

from .conftest import REPO, LiveServer, TinySetup, free_port
from .prometheus_server import api, instant, prometheus_server, requires_prometheus, wait_for, write_config
from .wake_service import COLD_START_BOUND, call, start_service
from .wake_service import stop as stop_service

pytestmark = [pytest.mark.slow, pytest.mark.serve]

DASHBOARD_DIR = REPO / "charts" / "llmfab" / "dashboards"
RULES = REPO / "charts" / "llmfab" / "files" / "prometheus-rules.yaml"
SCRAPE_SECONDS = 1.0
STEP_SECONDS = 1.0
TRAFFIC_SECONDS = 15  # completions from 3 clients for this long, at most MAX_REQUESTS
MAX_REQUESTS = 240
# Series that exist only where CUDA does (llmfab/training/components/metrics.py); the trainer here runs on CPU.
CUDA_ONLY = {f"llmfab_train_{name}" for name in CUDA_GAUGES}


@dataclass
class Stack:
    prometheus: str
    start: float
    end: float
    artifacts: Path


def training_spec(path: Path, port: int) -> Path:
    spec = {
        "dataset": {"name": "tinyds"},
        "release": {"license": "apache-2.0"},
        "model": {"layers": 2, "hidden": 64, "heads": 4, "contextLength": 32},
        "maxSteps": 100_000,  # stopped by the test
        "precision": "fp32",
        "batch": {"globalTokens": 256},
        "checkpoint": {"everySteps": 100_000},
        "evalEverySteps": 20,
        "evalBatches": 2,
        "monitoring": {"prometheusPort": port, "logEverySteps": 5, "tensorboard": False},
    }
    doc = {"apiVersion": "llmfab.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "dash-run"}, "spec": spec}
    path.write_text(yaml.safe_dump(doc))
    return path


def complete(url: str, i: int) -> None:
    body = {"model": "tiny", "prompt": f"The river {i}", "max_tokens": 64, "ignore_eos": True, "temperature": 0.8,
            "seed": i, "stream": i % 2 == 0}
    req = urllib.request.Request(f"{url}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()


def traffic(server: LiveServer) -> int:
    """Completions (half of them streamed) from 3 clients for TRAFFIC_SECONDS; how many were sent."""
    deadline = time.monotonic() + TRAFFIC_SECONDS

    def one(i: int) -> int:
        if time.monotonic() > deadline:
            return 0
        try:
            complete(server.url, i)
        except urllib.error.HTTPError as e:
            pytest.fail(f"vLLM answered {e.code} to a completion; its log ends:\n{server.log.read_text()[-3000:]}")
        return 1

    with ThreadPoolExecutor(3) as pool:
        return sum(pool.map(one, range(MAX_REQUESTS)))


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the trainer finishes its step and saves first
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def stack(vllm_server: LiveServer, tiny: TinySetup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    requires_prometheus()
    work = tmp_path_factory.mktemp("dashboards")
    home = work / "home"
    shutil.copytree(tiny.dataset, home / "datasets" / "tinyds")
    train_port, operator_port, interceptor_port = free_port(), free_port(), free_port()
    env = {**os.environ, "LLMFAB_HOME": str(home), "OMP_NUM_THREADS": "1",
           "LLMFAB_PEAK_FLOPS": "1.27e11"}  # this machine kind's measured sgemm peak, so MFU is reported
    with (work / "train.log").open("w") as train_log, (work / "operator.log").open("w") as operator_log:
        trainer = subprocess.Popen([sys.executable, "-m", "llmfab", "train", "run", "--spec",
                                    str(training_spec(work / "train.yaml", train_port))],
                                   env=env, cwd=work, stdout=train_log, stderr=subprocess.STDOUT)
        operator = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_operator_exporter.py")),
                                     str(operator_port), str(interceptor_port)],
                                    stdout=operator_log, stderr=subprocess.STDOUT)
    wake = start_service(tiny, work, "dash-wake", {"idleSeconds": 3600, "coldStartTimeoutSeconds": COLD_START_BOUND})
    vllm_target = vllm_server.url.removeprefix("http://").removesuffix("/v1")
    jobs = {"vllm": vllm_target, "llmfab-train": f"127.0.0.1:{train_port}",
            "llmfab-operator": f"127.0.0.1:{operator_port}", "keda-interceptor": f"127.0.0.1:{interceptor_port}",
            "wake": wake.url.removeprefix("http://").removesuffix("/v1")}
    config = write_config(work / "prometheus.yml", jobs, SCRAPE_SECONDS, [RULES])
    try:
        with prometheus_server(config, work / "tsdb") as url:
            for job in jobs:
                wait_for(url, f'up{{job="{job}"}} == 1', f"target {job}", timeout=180)
            wait_for(url, 'llmfab_train_val_loss{job="llmfab-train"}', "the trainer's first evaluation", timeout=180)
            before = instant(url, 'sum(vllm:request_success_total{job="vllm"})')
            done_before = float(before[0]["value"][1]) if before else 0.0
            start = time.time() - 5
            with ThreadPoolExecutor(1) as waker:  # wakes the sleeping service: one cold start in the window
                woken = waker.submit(call, f"{wake.url}/completions", {"model": "tiny", "prompt": "Wake", "max_tokens": 8})
                sent = traffic(vllm_server)
                code, _, raw = woken.result()
            assert code == 200, raw
            wait_for(url, f'sum(vllm:request_success_total{{job="vllm"}}) >= {done_before + sent}',
                     "vLLM's finished requests in Prometheus", timeout=60)
            # A few samples after the wake, so that the window's last steps have rates over it.
            wait_for(url, 'count_over_time(llmfab_serve_proxied_requests_total{job="wake"}[1m]) >= 4',
                     "the wake proxy's cold start and request in Prometheus", timeout=60)
            artifacts = Path(os.environ.get("LLMFAB_TEST_ARTIFACTS", work / "artifacts"))
            yield Stack(prometheus=url, start=start, end=time.time(), artifacts=artifacts)
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        stop(trainer)
        stop_service(wake)


def load(name: str) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads((DASHBOARD_DIR / f"{name}.json").read_text())
    return dashboard


def series_of(stack: Stack, dashboard: dict[str, Any]) -> dict[int, list[preview.Series]]:
    values = preview.default_values(dashboard)  # "All" = ".*" for every query variable; SLO = its default
    return {p["id"]: preview.panel_series(p, stack.prometheus, values, stack.start, stack.end, STEP_SECONDS,
                                          SCRAPE_SECONDS)
            for p in dashboard["panels"]}


def cuda_only(panel: dict[str, Any]) -> bool:
    return all(any(name in t["expr"] for name in CUDA_ONLY) for t in panel["targets"])


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_draws_data_and_the_dashboard_renders(stack: Stack, name: str) -> None:
    dashboard = load(name)
    data = series_of(stack, dashboard)
    png = preview.render(dashboard, data, stack.start, stack.end, stack.artifacts / f"dashboard-{name}.png",
                         subtitle="test_dashboards_live: every variable All, rate interval 4 s")
    print(f"\n{name}: {png}")
    empty = []
    for panel in dashboard["panels"]:
        drawn = [s for s in data[panel["id"]] if s.finite()]
        if cuda_only(panel):
            # Exported only where CUDA exists; this trainer runs on CPU, so the panel must be empty.
            assert not data[panel["id"]], f"{panel['title']}: a CPU trainer exported {CUDA_ONLY}"
        elif not drawn:
            empty.append(f"{panel['title']}: " + " | ".join(t["expr"] for t in panel["targets"]))
    assert not empty, f"{name}: panels with no data (see {png}):\n" + "\n".join(empty)
    assert png.stat().st_size > 20_000


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_query_variable_has_values(stack: Stack, name: str) -> None:
    """``label_values(series, label)`` is Grafana's; Prometheus's ``/api/v1/label/<label>/values``
    with ``match[]`` is what it sends."""
    dashboard = load(name)
    values = preview.default_values(dashboard)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        series, label = variable["query"].removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        found = api(stack.prometheus, f"label/{label}/values",
                    **{"match[]": preview.expand(series, values, 0), "start": stack.start, "end": stack.end})
        assert found, f"{name}: variable {variable['name']} ({variable['query']}) has no values"


def test_every_ttft_slo_choice_is_a_bucket_bound_vllm_exports(stack: Stack) -> None:
    for text, le in TTFT_SLO_CHOICES:
        found = instant(stack.prometheus, f'count(vllm:time_to_first_token_seconds_bucket{{le="{le}"}})')
        assert found, f"TTFT SLO {text}: vLLM has no bucket le=\"{le}\"; the SLO tile would show nothing"


def test_the_shipped_alert_rules_evaluate_against_live_series(stack: Stack) -> None:
    groups = api(stack.prometheus, "rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 3
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
