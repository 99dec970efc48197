"""An InferenceService on the cluster: a Deployment of ``llmfab serve run`` (which starts vLLM's
OpenAI server with the spec's arguments), a Service in front of it, and a ServiceMonitor when the
Prometheus operator is installed (scrape annotations otherwise).

The server pods report nothing to ``/status`` themselves (``LLMFAB_STATUS=off``): with several
replicas they would race, and the cluster URL and ready count come from the Service and the
Deployment, which the operator reads."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from llmfab.api.inference_service import FeedbackSpec, InferenceService
from llmfab.operator.builders.common import (
    SPEC_HASH_ANNOTATION,
    Manifest,
    child_name,
    gpus_per_pod,
    labels,
    metadata,
    pod_spec,
    selector_labels,
)
from llmfab.operator.builders.jobs import scrape_annotations
from llmfab.operator.builders.kueue import with_kueue_labels
from llmfab.operator.settings import OperatorSettings

COMPONENT = "serve"
PORT_NAME = "http"
FEEDBACK_PORT_NAME = "feedback"
# vLLM loads and (on CPU) warms up the model before /health answers: minutes on a big model.
STARTUP_SECONDS = 1200


def server_selector(res: InferenceService) -> str:
    """The server pods' label selector as one string: ``status.selector``, which the CRD's /scale
    subresource hands to an HPA or ``kubectl scale``."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(res, COMPONENT).items()))


def service_name(res: InferenceService) -> str:
    return child_name(res)


def service_url(res: InferenceService) -> str:
    """The OpenAI base URL inside the cluster."""
    return f"http://{service_name(res)}.{res.metadata.namespace}.svc:{res.spec.server.port}/v1"


def _feedback(res: InferenceService) -> list[FeedbackSpec]:
    """The human-feedback app's spec when enabled (it runs in the server container), else nothing."""
    return [res.spec.feedback] if res.spec.feedback.enabled else []


def feedback_url(res: InferenceService) -> str:
    """The human-feedback app inside the cluster (``spec.feedback``)."""
    return f"http://{service_name(res)}.{res.metadata.namespace}.svc:{res.spec.feedback.port}/"


def _probe(path: str, port: int, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": 5}


def build_deployment(res: InferenceService, settings: OperatorSettings, use_service_monitor: bool) -> Manifest:
    port = res.spec.server.port
    gpus = gpus_per_pod(res, res.spec.server.tensor_parallel_size)
    probes = {
        "ports": [{"name": PORT_NAME, "containerPort": port, "protocol": "TCP"}]
        + [{"name": FEEDBACK_PORT_NAME, "containerPort": f.port, "protocol": "TCP"} for f in _feedback(res)],
        "startupProbe": _probe("/health", port, 10, STARTUP_SECONDS // 10),
        "readinessProbe": _probe("/health", port, 5, 3),
        "livenessProbe": _probe("/health", port, 15, 4),
    }
    spec = pod_spec(res, settings, "serve", settings.serving_image, gpus, extra_env=_token_env(res), status="off",
                    container_extra=probes)
    # The server reports nothing to the API server (LLMFAB_STATUS=off): a token would only be a
    # credential for whoever gets into the pod.
    spec["automountServiceAccountToken"] = False
    # vLLM's engine gets SIGTERM from `llmfab serve run` and needs a moment to drain requests.
    spec["terminationGracePeriodSeconds"] = 60
    # Any change of what the pods run rolls them (the server block too, which the output hash omits).
    served = res.spec.model_dump(mode="json", by_alias=True, exclude={"replicas", "autoscaling", "deletion_policy"})
    annotations = {SPEC_HASH_ANNOTATION: hashlib.sha256(json.dumps(served, sort_keys=True).encode()).hexdigest()[:16]}
    if not use_service_monitor:
        annotations |= scrape_annotations(port)
    # Under spec.autoscaling the autoscaler owns the replicas: the manifest leaves them out, so a
    # create starts one and a patch never fights what the autoscaler set.
    replicas = res.spec.fixed_replicas()
    meta = metadata(res, child_name(res), COMPONENT, with_revision=False)
    # Queued: each server pod is one Kueue workload (Kueue's deployment integration, on by default
    # since v0.15, reads the Deployment's labels and copies them to the pods it gates).
    meta["labels"] = with_kueue_labels(meta["labels"], res)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            **({"replicas": replicas} if replicas is not None else {}),
            "selector": {"matchLabels": selector_labels(res, COMPONENT)},
            "strategy": _strategy(res),
            "template": {
                "metadata": {"labels": labels(res, COMPONENT, with_revision=False), "annotations": annotations},
                "spec": spec,
            },
        },
    }


def _token_env(res: InferenceService) -> list[dict[str, Any]]:
    """``$tokenEnv`` from the Secret ``spec.feedback.tokenSecret`` names, resolved by the kubelet:
    the token is never in a manifest, and the operator needs no access to Secrets."""
    secret = res.spec.feedback.token_secret
    if not res.spec.feedback.enabled or secret is None:
        return []
    ref = {"name": secret.name, "key": secret.key}
    return [{"name": res.spec.feedback.token_env, "valueFrom": {"secretKeyRef": ref}}]


def _strategy(res: InferenceService) -> dict[str, Any]:
    """Roll without downtime, except where the pods write the feedback store: SQLite has one
    writer, and a surge pod would be a second one during every rollout, so the old pod goes first."""
    if res.spec.feedback.enabled:
        # null drops the rolling parameters of a Deployment that had them (apply is a merge patch);
        # the API server refuses them beside Recreate.
        return {"type": "Recreate", "rollingUpdate": None}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def build_service(res: InferenceService) -> Manifest:
    port = res.spec.server.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(res, service_name(res), COMPONENT, with_revision=False),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(res, COMPONENT),
            "ports": [{"name": PORT_NAME, "port": port, "targetPort": PORT_NAME, "protocol": "TCP"}]
            + [{"name": FEEDBACK_PORT_NAME, "port": f.port, "targetPort": FEEDBACK_PORT_NAME, "protocol": "TCP"}
               for f in _feedback(res)],
        },
    }


def build_service_monitor(res: InferenceService, extra_labels: dict[str, str] | None = None) -> Manifest:
    """For the Prometheus operator; kube-prometheus-stack selects ServiceMonitors by its release
    label by default, which the chart passes in ``extra_labels``."""
    meta = metadata(res, child_name(res), COMPONENT, with_revision=False)
    meta["labels"].update(extra_labels or {})
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": selector_labels(res, COMPONENT)},
            "endpoints": [{"port": PORT_NAME, "path": "/metrics", "interval": "15s"}],
        },
    }


def uses_service_monitor(res: InferenceService, settings: OperatorSettings) -> bool:
    mode = res.spec.monitoring.service_monitor
    return mode == "always" or (mode == "auto" and settings.service_monitors)
