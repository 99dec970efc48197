"""A serving InferenceService, as a pure function of what the cluster shows: its children (the
Deployment and Service; KEDA's objects under ``spec.autoscaling``), and its phase, reason,
message and the status fields the operator owns (``url``, ``readyReplicas``, ``replicas`` and
``selector`` for the /scale subresource, ``scale``). ``reconcile.decide`` calls it for the
``serve`` stage and writes the phase the same way as for every other stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmfab.api.common import Phase, utc_now
from llmfab.api.inference_service import InferenceService
from llmfab.operator.builders.autoscaling import KedaApis, build_autoscaler, proxy_url, uses_interceptor
from llmfab.operator.builders.common import Manifest, build_spec_config_map, queue_name
from llmfab.operator.builders.inference import (
    build_deployment,
    build_service,
    build_service_monitor,
    feedback_url,
    server_selector,
    service_url,
    uses_service_monitor,
)
from llmfab.operator.builders.kueue import admission_gated, keep_queue_of
from llmfab.operator.scale_state import IDLE, WAKING, next_scale
from llmfab.operator.settings import OperatorSettings


@dataclass
class Serving:
    phase: Phase
    reason: str
    message: str
    ready: bool  # the Ready condition
    status: dict[str, Any]  # the operator's status fields (None removes one)
    children: list[Manifest] = field(default_factory=list)
    remove: list[dict[str, Any]] = field(default_factory=list)  # KEDA's objects no longer wanted
    cold_start_seconds: float | None = None  # a wake from zero completed


@dataclass(frozen=True)
class Seen:
    """What the handler read for a serving InferenceService."""

    deployment: dict[str, Any] | None
    scale: dict[str, Any] | None  # status.scale as stored
    keda: KedaApis  # which of KEDA's kinds the cluster serves
    autoscaler: tuple[dict[str, Any], ...]  # KEDA's objects that exist for it
    server_pods: tuple[dict[str, Any], ...]


def plan_serving(res: InferenceService, settings: OperatorSettings, seen: Seen) -> Serving:
    monitor = uses_service_monitor(res, settings)
    deployment = keep_queue_of(build_deployment(res, settings, monitor), seen.deployment)
    children = [build_spec_config_map(res), deployment, build_service(res)]
    if monitor:
        children.append(build_service_monitor(res, settings.service_monitor_labels))
    autoscaler = build_autoscaler(res, settings, seen.keda) if res.spec.autoscaling is not None else []
    wanted = {(m["kind"], m["metadata"]["name"]) for m in autoscaler}
    remove = [c for c in seen.autoscaler if (c["kind"], c["metadata"]["name"]) not in wanted
              and not c["metadata"].get("deletionTimestamp")]
    dep_status = (seen.deployment or {}).get("status") or {}
    ready = int(dep_status.get("readyReplicas") or 0)
    # replicas and selector are what the CRD's /scale subresource reads (kubectl scale, an HPA).
    status: dict[str, Any] = {"readyReplicas": ready, "replicas": int(dep_status.get("replicas") or 0),
                              "selector": server_selector(res), "scale": None}
    if res.spec.feedback.enabled:
        status["feedbackUrl"] = feedback_url(res)
    if res.spec.autoscaling is not None:
        serving = _autoscaled(res, settings, seen, status)
    else:
        status["url"] = url = service_url(res)
        fixed = res.spec.fixed_replicas()
        if fixed == 0:
            serving = Serving(Phase.PENDING, "ScaledToZero", "replicas: 0", False, status)
        elif ready:
            serving = Serving(Phase.RUNNING, "Serving", f"serving {url} ({ready}/{fixed or ready} ready)", True, status)
        else:
            serving = Serving(Phase.RUNNING, "Starting", "waiting for the vLLM server to answer /health", False, status)
    gated = [p for p in seen.server_pods if admission_gated(p) and not p["metadata"].get("deletionTimestamp")]
    if gated and not serving.ready:
        serving.phase, serving.reason = Phase.QUEUED, "Queued"
        serving.message = (f"{len(gated)} server pod(s) wait for Kueue to admit them (LocalQueue "
                           f"{queue_name(res)}); {serving.message}")
    serving.children, serving.remove = children + autoscaler, remove
    return serving


def _autoscaled(res: InferenceService, settings: OperatorSettings, seen: Seen, status: dict[str, Any]) -> Serving:
    """An autoscaled service from its scale state (scale_state.py). Idle counts as ready: the route
    exists and a request wakes a server, as a KServe service scaled to zero stays Ready; Waking
    does not, so ``kubectl wait`` after an apply waits until the model has loaded once."""
    assert res.spec.autoscaling is not None
    interceptor = uses_interceptor(seen.keda)
    status["url"] = url = proxy_url(res, settings) if interceptor else service_url(res)
    step = next_scale(seen.scale, seen.deployment, list(seen.server_pods), utc_now())
    status["scale"] = step.scale
    state = step.scale["state"]
    if state == IDLE:
        return Serving(Phase.RUNNING, "Idle", f"idle at 0 replicas; the next request to {url} wakes a server",
                       True, status)
    if state == WAKING:
        held = (f"; requests to {url} are held for up to {res.spec.autoscaling.cold_start_timeout_seconds} s"
                if interceptor else "")
        return Serving(Phase.RUNNING, "Waking", f"starting a server (vLLM loads the model){held}", False, status)
    woke = (f"; woke from zero in {step.cold_start_seconds:.0f} s (cold start {step.scale['coldStarts']})"
            if step.cold_start_seconds is not None else "")
    return Serving(Phase.RUNNING, "Serving", f"serving {url} ({step.ready}/{step.desired} ready){woke}", True,
                   status, cold_start_seconds=step.cold_start_seconds)
