"""The operator's Prometheus metrics (``llmfab_operator_*``), served on its metrics port."""

from __future__ import annotations

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
