"""metrics.jsonl, TensorBoard event files and the Prometheus endpoint."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

from llmfab.api.training_run import MonitoringSpec
from llmfab.training.components.metrics import MetricsSink, flops_per_token, peak_flops


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rank0_writes_jsonl_tensorboard_and_serves_prometheus(tmp_path: Path) -> None:
    port = _free_port()
    spec = MonitoringSpec(prometheus_port=port, tensorboard=True)
    sink = MetricsSink(tmp_path, spec, "tiny", enabled=True)
    try:
        sink.log(3, {"loss": 2.5, "lr": 1e-3, "grad_norm": 0.7, "tokens_per_second": 1234.0, "mfu": None})
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        sink.close()
    for name, value in (("loss", "2.5"), ("step", "3.0"), ("lr", "0.001"), ("grad_norm", "0.7"),
                        ("tokens_per_second", "1234.0")):
        assert f'llmfab_train_{name}{{run="tiny"}} {value}' in body
    assert "llmfab_train_mfu" in body
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 3, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.7, "tokens_per_second": 1234.0}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    sink = MetricsSink(tmp_path / "run", MonitoringSpec(), "tiny", enabled=False)
    sink.log(1, {"loss": 1.0})
    sink.close()
    assert not (tmp_path / "run").exists()


def test_mfu_inputs() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops(None) is None
    assert flops_per_token(1000, 2, 64, 32) == 6 * 1000 + 12 * 2 * 64 * 32
