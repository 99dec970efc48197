"""What rank 0's Prometheus exporter measures itself: step time, and device memory where CUDA exists."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import torch

from llmfab.training.components import metrics
from llmfab.training.components.metrics import CUDA_GAUGES, PrometheusExporter


def scrape(exporter: PrometheusExporter) -> dict[str, float]:
    port = exporter.server.server_address[1]
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
            if line.startswith("llmfab_train_")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: now[0])
    return now


def test_step_seconds_is_wall_time_between_logs_over_the_steps_between_them(clock: list[float]) -> None:
    exporter = PrometheusExporter(free_port(), "tiny")
    try:
        exporter.update({"step": 10, "loss": 3.0})
        assert "llmfab_train_step_seconds" not in scrape(exporter)  # no interval yet
        clock[0] += 5.0
        exporter.update({"step": 20, "loss": 2.5})
        assert scrape(exporter)["llmfab_train_step_seconds"] == pytest.approx(0.5)
    finally:
        exporter.close()


def test_a_value_never_reported_is_absent_not_zero(clock: list[float]) -> None:
    exporter = PrometheusExporter(free_port(), "tiny")
    try:
        exporter.update({"step": 1, "loss": 3.0, "mfu": None, "val_loss": float("nan")})
        values = scrape(exporter)
        assert values["llmfab_train_loss"] == 3.0
        assert "llmfab_train_mfu" not in values and "llmfab_train_val_loss" not in values
    finally:
        exporter.close()


def test_gpu_memory_gauges_exist_only_where_cuda_does(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {f"llmfab_train_{n}" for n in CUDA_GAUGES}
    exporter = PrometheusExporter(free_port(), "tiny")
    try:
        exporter.update({"step": 1})
        exported = names & scrape(exporter).keys()
        assert exported == (names if torch.cuda.is_available() else set())
    finally:
        exporter.close()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 4 * 2**30)
    exporter = PrometheusExporter(free_port(), "tiny")
    try:
        exporter.update({"step": 1})
        values = scrape(exporter)
        assert values["llmfab_train_gpu_memory_allocated_bytes"] == 3 * 2**30
        assert values["llmfab_train_gpu_memory_reserved_bytes"] == 4 * 2**30
    finally:
        exporter.close()
