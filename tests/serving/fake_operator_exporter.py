"""Stand-in for the operator's metrics endpoint: the operator itself needs an API server.

Serves ``llmfab.operator.metrics.REGISTRY`` (the operator's own counters, histogram and phase
gauge, fed through its own ``observe_phase``) plus the Dataset step gauges the Pipeline dashboard
queries, with the names and labels the operator is to export, and an autoscaled InferenceService
that sleeps and wakes (``observe_serving``), and each resource's usage (``observe_usage``). On a second port it stands in for the KEDA HTTP
add-on's interceptor (``interceptor_request_concurrency`` per route, as its OTel Prometheus
exporter writes it), which needs a cluster. Run: ``python fake_operator_exporter.py PORT INTERCEPTOR_PORT``.
"""

from __future__ import annotations

import random
import sys
import time

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from llmfab.operator import metrics

# The operator's own gauges once it exports them; until then the same names and labels, here.
DOCUMENTS = getattr(metrics, "DATASET_DOCUMENTS", None) or Gauge(
    "llmfab_dataset_documents", "Documents into (stage=in) and out of (stage=out) each Dataset step.",
    ["namespace", "dataset", "step", "stage"], registry=metrics.REGISTRY)
REMOVED = getattr(metrics, "DATASET_REMOVED", None) or Gauge(
    "llmfab_dataset_documents_removed", "Documents each Dataset step removed, by reason.",
    ["namespace", "dataset", "step", "reason"], registry=metrics.REGISTRY)

RESOURCES = {"ds-uid": ("Dataset", "Succeeded"), "run-uid": ("TrainingRun", "Running"),
             "run2-uid": ("TrainingRun", "Running"), "run3-uid": ("TrainingRun", "Pending"), "svc-uid": ("InferenceService", "Running"),
             "rm-uid": ("RewardModel", "Failed")}
# (step, documents in, documents out, removed by reason), as a Dataset's status.steps reports them.
STEPS = [("normalise", 1200, 1188, {"empty": 12}), ("gopher_quality", 1188, 1010, {"too_short": 150, "symbols": 28}),
         ("exact_dedup", 1010, 930, {"duplicate": 80}), ("near_dedup", 930, 874, {"near_duplicate": 56})]


INTERCEPTOR = CollectorRegistry()
IN_FLIGHT = Gauge("interceptor_request_concurrency", "Concurrent requests at the interceptor proxy",
                  ["route_name", "route_namespace"], registry=INTERCEPTOR)


def sleep_and_wake(tick: int, rng: random.Random) -> None:
    """An autoscaled service's cycle of 8 ticks: idle, woken (requests held), ready, busy."""
    phase = tick % 8
    desired, ready = (0, 0) if phase < 2 else (1, 0) if phase < 4 else (2, 2)
    replicas = {"spec": {"replicas": desired}, "status": {"readyReplicas": ready}}
    woke = rng.uniform(20, 60) if phase == 4 else None
    metrics.observe_serving("default", "svc", replicas, woke)
    IN_FLIGHT.labels(route_name="svc", route_namespace="default").set(0 if phase < 2 else rng.randint(1, 6))


def main(port: int, interceptor_port: int) -> None:
    for uid, (kind, phase) in RESOURCES.items():
        metrics.observe_phase(uid, kind, phase)
        gpu_seconds = {"Dataset": 0.0, "TrainingRun": 7200.0, "RewardModel": 1800.0, "InferenceService": 3600.0}[kind]
        metrics.observe_usage("default", kind, uid.removesuffix("-uid"), {
            "gpuSeconds": gpu_seconds, "cpuSeconds": 4 * gpu_seconds + 600, "energyKwh": gpu_seconds / 3600 * 0.35,
            "attempts": 1, "cost": gpu_seconds / 3600 * 0.8, "currency": "EUR"})
    for step, documents_in, documents_out, removed in STEPS:
        DOCUMENTS.labels(namespace="default", dataset="tinyds", step=step, stage="in").set(documents_in)
        DOCUMENTS.labels(namespace="default", dataset="tinyds", step=step, stage="out").set(documents_out)
        for reason, n in removed.items():
            REMOVED.labels(namespace="default", dataset="tinyds", step=step, reason=reason).set(n)
    start_http_server(port, addr="127.0.0.1", registry=metrics.REGISTRY)
    start_http_server(interceptor_port, addr="127.0.0.1", registry=INTERCEPTOR)
    rng = random.Random(0)
    tick = 0
    while True:  # the test terminates this process
        sleep_and_wake(tick, rng)
        tick += 1
        for kind, _ in RESOURCES.values():
            metrics.RECONCILES.labels(kind=kind).inc()
            with metrics.SECONDS.labels(kind=kind).time():
                time.sleep(rng.uniform(0.001, 0.02))
            if kind == "RewardModel" and rng.random() < 0.5:
                metrics.ERRORS.labels(kind=kind).inc()
        time.sleep(0.3)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
