"""Where training numbers go, in the formats their tools read: ``metrics.jsonl``, TensorBoard event
files, optional W&B (offline works without network), a Prometheus ``/metrics`` endpoint and a rich
console line. Only rank 0 writes; the other ranks get a sink that does nothing.

Environment: ``LLMFAB_METRICS_PORT`` overrides ``monitoring.prometheusPort`` (e.g. two local runs at
once); ``LLMFAB_PEAK_FLOPS`` sets the peak FLOP/s for MFU where the device table has none (CPUs).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from llmfab.api.training_run import MonitoringSpec

# bf16 dense (no sparsity) peak FLOP/s from the vendors' data sheets, by device name fragment, for
# MFU; the first fragment found in the name wins, so the PCIe/NVL H100 come before the SXM one.
# CPUs have no dependable number (set LLMFAB_PEAK_FLOPS to report MFU anyway).
PEAK_BF16_FLOPS = {"B200": 2250e12, "H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12,
                   "H800": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12,
                   "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device_name: str | None) -> float | None:
    if "LLMFAB_PEAK_FLOPS" in os.environ:
        return float(os.environ["LLMFAB_PEAK_FLOPS"])
    if device_name:
        for fragment, flops in PEAK_BF16_FLOPS.items():
            if fragment in device_name:
                return flops
    return None


def flops_per_token(parameters_applied: int, layers: int, hidden: int, context: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus attention scores (PaLM appendix B)."""
    return 6 * parameters_applied + 12 * layers * hidden * context


def model_flops_utilization(tokens_per_second: float, flops_per_token_: float, peak: float | None,
                            devices: int = 1) -> float | None:
    """Achieved model FLOP/s over the peak of all ``devices`` (0-1); None where the peak is unknown.

    Model FLOPs, not hardware FLOPs: recomputation (activation checkpointing) does not count.
    """
    if not peak or devices < 1:
        return None
    return tokens_per_second * flops_per_token_ / (peak * devices)


# Names are fixed: the Grafana dashboards (llmfab/monitoring/dashboards.py) query them.
GAUGES = {
    "loss": "train loss", "tokens_per_second": "training throughput", "step": "optimizer step",
    "lr": "learning rate", "grad_norm": "global gradient norm before clipping",
    "mfu": "model FLOPs utilisation (0-1)", "val_loss": "validation loss",
    "step_seconds": "wall seconds per optimizer step, averaged since the previous log",
}
# Exported only where CUDA exists: rank 0's device, read at each log.
CUDA_GAUGES = {
    "gpu_memory_allocated_bytes": "CUDA memory held by tensors (torch.cuda.memory_allocated)",
    "gpu_memory_reserved_bytes": "CUDA memory held by the caching allocator (torch.cuda.memory_reserved)",
}


class PrometheusExporter:
    """Gauges ``llmfab_train_<name>{run}`` on rank 0's ``/metrics`` (the Grafana dashboards query these).

    A gauge appears once it has a value, so a validation loss not yet computed, or an MFU that a
    CPU cannot report, is absent rather than a misleading 0. ``step_seconds`` is the wall time
    between two logs divided by the steps between them, so it starts at the second log.
    """

    def __init__(self, port: int, run: str) -> None:
        import torch
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.run = run
        self.cuda = torch.cuda.is_available()
        names = {**GAUGES, **(CUDA_GAUGES if self.cuda else {})}
        self.gauges = {key: Gauge(f"llmfab_train_{key}", help_, ["run"], registry=self.registry)
                       for key, help_ in names.items()}
        self.previous: tuple[int, float] | None = None
        self.server, self.thread = start_http_server(port, registry=self.registry)

    def update(self, values: dict[str, Any]) -> None:
        values = {**values, **self.measured(values.get("step"))}
        for key, gauge in self.gauges.items():
            value = values.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                gauge.labels(run=self.run).set(value)

    def measured(self, step: Any) -> dict[str, float]:
        """What the exporter measures itself: step time and, on CUDA, device memory."""
        out: dict[str, float] = {}
        now = time.monotonic()
        if isinstance(step, int):
            if self.previous is not None and step > self.previous[0]:
                out["step_seconds"] = (now - self.previous[1]) / (step - self.previous[0])
            self.previous = (step, now)
        if self.cuda:
            import torch

            out["gpu_memory_allocated_bytes"] = float(torch.cuda.memory_allocated())
            out["gpu_memory_reserved_bytes"] = float(torch.cuda.memory_reserved())
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MetricsSink:
    """Rank 0's writers; ``log`` takes one flat dict of numbers per step."""

    def __init__(self, run_dir: Path, spec: MonitoringSpec, run_name: str, enabled: bool,
                 config: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.jsonl = None
        self.tensorboard = None
        self.prometheus: PrometheusExporter | None = None
        self.wandb: Any = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = (run_dir / "metrics.jsonl").open("a")
        if spec.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        if spec.prometheus_port is not None:
            port = int(os.environ.get("LLMFAB_METRICS_PORT", spec.prometheus_port))
            try:
                self.prometheus = PrometheusExporter(port, run_name)
            except OSError as e:
                raise OSError(
                    f"spec.monitoring.prometheusPort: cannot listen on {port} ({e}); choose a free port "
                    "or set it to null"
                ) from e
        if spec.wandb.enabled:
            try:
                import wandb
            except ImportError as e:
                raise ImportError(
                    "spec.monitoring.wandb.enabled: the wandb package is not installed; "
                    "pip install wandb, or disable it"
                ) from e
            self.wandb = wandb.init(project=spec.wandb.project, name=run_name, mode=spec.wandb.mode,
                                    dir=str(run_dir), config=config or {})

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: v for k, v in values.items() if v is not None}
        assert self.jsonl is not None
        self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self.jsonl.flush()
        for key, value in clean.items():
            if isinstance(value, int | float):
                if self.tensorboard is not None:
                    self.tensorboard.add_scalar(f"train/{key}", value, step)
        if self.prometheus is not None:
            self.prometheus.update({"step": step, **clean})
        if self.wandb is not None:
            self.wandb.log(clean, step=step)

    def print_progress(self, step: int, total: int, values: dict[str, Any]) -> None:
        """One console line per logged step, the numbers the status carries."""
        if not self.enabled:
            return
        parts = [f"step {step}/{total}"]
        for key, fmt in (("loss", "loss {:.4f}"), ("val_loss", "val {:.4f}"), ("lr", "lr {:.2e}"),
                         ("tokens_per_second", "{:.0f} tok/s"), ("eta_seconds", "eta {:.0f}s")):
            if values.get(key) is not None:
                parts.append(fmt.format(values[key]))
        bar_width = 20
        done = int(bar_width * step / max(1, total))
        self.console.print(f"[cyan]{'━' * done}{'╌' * (bar_width - done)}[/] " + "  ".join(parts),
                           highlight=False)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.prometheus is not None:
            self.prometheus.close()
        if self.wandb is not None:
            self.wandb.finish()
