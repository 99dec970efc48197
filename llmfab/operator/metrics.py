"""The operator's Prometheus metrics (``llmfab_operator_*``), served on its metrics port."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()
RECONCILES = Counter("llmfab_operator_reconciles", "Reconcile passes.", ["kind"], registry=REGISTRY)
ERRORS = Counter("llmfab_operator_reconcile_errors", "Reconcile passes that raised.", ["kind"], registry=REGISTRY)
SECONDS = Histogram("llmfab_operator_reconcile_seconds", "Time of one reconcile pass.", ["kind"],
                    registry=REGISTRY, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RESOURCES = Gauge("llmfab_operator_resources", "Resources by kind and phase.", ["kind", "phase"], registry=REGISTRY)

_phases: dict[str, tuple[str, str]] = {}  # uid -> (kind, phase)
_lock = threading.Lock()


def observe_phase(uid: str, kind: str, phase: str | None) -> None:
    """Record a resource's phase (None: deleted) and recount the gauge."""
    with _lock:
        if phase is None:
            _phases.pop(uid, None)
        else:
            _phases[uid] = (kind, phase)
        counts: dict[tuple[str, str], int] = {}
        for key in _phases.values():
            counts[key] = counts.get(key, 0) + 1
        RESOURCES.clear()
        for (k, p), n in counts.items():
            RESOURCES.labels(kind=k, phase=p).set(n)

DATASET_DOCUMENTS = Gauge("llmfab_dataset_documents", "Documents into and out of each Dataset step.",
                          ["namespace", "dataset", "step", "stage"], registry=REGISTRY)
DATASET_REMOVED = Gauge("llmfab_dataset_documents_removed", "Documents each Dataset step removed, by reason.",
                        ["namespace", "dataset", "step", "reason"], registry=REGISTRY)


_dataset_series: dict[tuple[str, str], list[tuple[Gauge, tuple[str, ...]]]] = {}


def observe_dataset(namespace: str, dataset: str, steps: list[dict[str, Any]] | None) -> None:
    """Export a Dataset's per-step counts from its status (``None``: deleted, drop its series)."""
    with _lock:
        for gauge, labels in _dataset_series.pop((namespace, dataset), []):
            gauge.remove(*labels)
        series: list[tuple[Gauge, tuple[str, ...]]] = []
        for step in steps or []:
            name = str(step.get("name"))
            for stage, key in (("in", "documentsIn"), ("out", "documentsOut")):
                series.append((DATASET_DOCUMENTS, (namespace, dataset, name, stage)))
                DATASET_DOCUMENTS.labels(*series[-1][1]).set(float(step.get(key) or 0))
            for reason, count in (step.get("removed") or {}).items():
                series.append((DATASET_REMOVED, (namespace, dataset, name, str(reason))))
                DATASET_REMOVED.labels(*series[-1][1]).set(float(count))
        if series:
            _dataset_series[(namespace, dataset)] = series


# InferenceServices: replicas (what KEDA or spec.replicas asked for, and what is ready) and the
# wakes from zero of autoscaled ones. Labelled resource_namespace/resource, not namespace: a
# ServiceMonitor's target labels (namespace, service, pod) would rename those to exported_*.
SERVING = ("resource_namespace", "resource")
REPLICAS = Gauge("llmfab_inference_replicas", "Server replicas of each InferenceService: desired and ready.",
                 [*SERVING, "state"], registry=REGISTRY)
COLD_STARTS = Counter("llmfab_inference_cold_starts", "Wakes from zero that completed (spec.autoscaling).",
                      SERVING, registry=REGISTRY)
COLD_START_SECONDS = Histogram("llmfab_inference_cold_start_seconds",
                               "A wake from zero: first new pod created to first pod ready.", SERVING,
                               registry=REGISTRY, buckets=(1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200))
LAST_COLD_START = Gauge("llmfab_inference_last_cold_start_seconds", "The last wake from zero of each service.",
                        SERVING, registry=REGISTRY)


def observe_serving(namespace: str, name: str, deployment: dict[str, Any] | None,
                    cold_start_seconds: float | None) -> None:
    """Export a service's replicas from its Deployment (none yet, or stopped: no series), and a wake
    from zero that just completed."""
    with _lock:
        if deployment is None:
            for state in ("desired", "ready"):
                with contextlib.suppress(KeyError):  # never observed
                    REPLICAS.remove(namespace, name, state)
        else:
            desired = (deployment.get("spec") or {}).get("replicas", 1)  # the API server's default
            REPLICAS.labels(namespace, name, "desired").set(float(desired))
            REPLICAS.labels(namespace, name, "ready").set(float((deployment.get("status") or {}).get("readyReplicas") or 0))
        if cold_start_seconds is not None:
            COLD_STARTS.labels(namespace, name).inc()
            COLD_START_SECONDS.labels(namespace, name).observe(cold_start_seconds)
            LAST_COLD_START.labels(namespace, name).set(cold_start_seconds)


def forget_serving(namespace: str, name: str) -> None:
    """A deleted InferenceService: drop its series."""
    with _lock:
        for metric, labels in ((REPLICAS, (namespace, name, "desired")), (REPLICAS, (namespace, name, "ready")),
                               (COLD_STARTS, (namespace, name)), (COLD_START_SECONDS, (namespace, name)),
                               (LAST_COLD_START, (namespace, name))):
            with contextlib.suppress(KeyError):  # never observed
                metric.remove(*labels)


# Each resource's status.usage (llmfab/operator/usage.py), for the Pipeline dashboard's GPU-hours
# and cost per resource. Gauges, not counters: the operator re-reads the sums from status, and a
# restart must not start them from zero.
USAGE_LABELS = ("resource_namespace", "kind", "resource")
USAGE_GPU_SECONDS = Gauge("llmfab_usage_gpu_seconds", "GPUs x time of each resource's pods, all attempts.",
                          USAGE_LABELS, registry=REGISTRY)
USAGE_CPU_SECONDS = Gauge("llmfab_usage_cpu_reserved_seconds", "CPU requests x time of each resource's pods.",
                          USAGE_LABELS, registry=REGISTRY)
USAGE_ENERGY = Gauge("llmfab_usage_energy_kwh", "Energy of each resource: measured (NVML) or estimated.",
                     USAGE_LABELS, registry=REGISTRY)
USAGE_COST = Gauge("llmfab_usage_cost", "Estimated cost of each resource at the chart's prices.",
                   [*USAGE_LABELS, "currency"], registry=REGISTRY)
USAGE_ATTEMPTS = Gauge("llmfab_usage_attempts", "Runs of each resource's workloads (retries and preemptions count).",
                       USAGE_LABELS, registry=REGISTRY)
_usage_series: dict[tuple[str, str, str], list[tuple[Gauge, tuple[str, ...]]]] = {}


def observe_usage(namespace: str, kind: str, name: str, usage: dict[str, Any] | None) -> None:
    """Export a resource's usage (None: deleted, drop its series); a figure status lacks (no
    price, no energy) has no series."""
    key = (namespace, kind, name)
    with _lock:
        for gauge, labels in _usage_series.pop(key, []):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        if usage is None:
            return
        series: list[tuple[Gauge, tuple[str, ...]]] = []
        for gauge, field in ((USAGE_GPU_SECONDS, "gpuSeconds"), (USAGE_CPU_SECONDS, "cpuSeconds"),
                             (USAGE_ENERGY, "energyKwh"), (USAGE_ATTEMPTS, "attempts")):
            if usage.get(field) is not None:
                series.append((gauge, key))
                gauge.labels(*key).set(float(usage[field]))
        if usage.get("cost") is not None:
            series.append((USAGE_COST, (*key, str(usage.get("currency") or ""))))
            USAGE_COST.labels(*series[-1][1]).set(float(usage["cost"]))
        _usage_series[key] = series
