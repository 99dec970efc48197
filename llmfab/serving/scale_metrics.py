"""The Prometheus series of a service that scales to zero on one machine (``llmfab_serve_*``).

The wake proxy (``wake_proxy.py``) serves them on the service's own ``/metrics``, followed by
vLLM's series while vLLM runs, so one scrape target carries both. Every series is labelled with
``model_name`` (the served model name), the label vLLM puts on its own, so the Inference latency
dashboard filters both alike. A registry of its own: no ``process_*``/``python_*`` series that
would collide with vLLM's in the same exposition.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds from the waking request to vLLM's /health: a tiny model on a CPU takes tens of seconds,
# a large one on a GPU minutes.
COLD_START_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1200.0)


class ScaleMetrics:
    """One service's series; each child is created at once, so every series exists (at 0) from the start."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        label = ["model_name"]
        r = self.registry
        self.cold_starts = Counter(
            "llmfab_serve_cold_starts", "Wakes from zero that reached a ready vLLM.", label, registry=r
        ).labels(model_name)
        self.cold_start_seconds = Histogram(
            "llmfab_serve_cold_start_seconds", "Seconds from the request that woke the service to a ready vLLM.",
            label, registry=r, buckets=COLD_START_BUCKETS,
        ).labels(model_name)  # fmt: skip
        self.held = Gauge(
            "llmfab_serve_requests_held", "Requests held while the server wakes.", label, registry=r
        ).labels(model_name)
        self.replicas = Gauge(
            "llmfab_serve_replicas", "vLLM servers running or starting: 0 (scaled to zero) or 1.", label, registry=r
        ).labels(model_name)
        self.wake_timeouts = Counter(
            "llmfab_serve_wake_timeouts",
            "Requests answered 503: no ready server within spec.autoscaling.coldStartTimeoutSeconds.",
            label, registry=r,
        ).labels(model_name)  # fmt: skip
        self._proxied = Counter(
            "llmfab_serve_proxied_requests", "Requests forwarded to vLLM, by the status code it answered.",
            ["model_name", "code"], registry=r,
        )  # fmt: skip

    def proxied(self, code: int) -> None:
        self._proxied.labels(self.model_name, str(code)).inc()
