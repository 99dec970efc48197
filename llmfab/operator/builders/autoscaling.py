"""An autoscaled InferenceService (``spec.autoscaling``) on the cluster: what KEDA is given.

- A ScaledObject (``keda.sh/v1alpha1``) on the server Deployment: ``minReplicaCount`` and
  ``maxReplicaCount`` from the spec, ``cooldownPeriod`` = ``idleSeconds`` (and the same grace after
  the ScaledObject is created, ``initialCooldownPeriod``, so the first server loads the model once
  instead of being scaled away at once), and its triggers:

  - ``external-push`` to the KEDA HTTP add-on's external scaler, naming the InterceptorRoute
    (metadata ``scalerAddress`` and ``interceptorRoute``, the keys the add-on's scaler reads since
    v0.14): requests in flight at the interceptor per replica, and the wake from zero;
  - ``prometheus``: vLLM's own queue, ``vllm:num_requests_running`` + ``vllm:num_requests_waiting``
    of this service's pods (``namespace`` and ``model_name`` labels), per replica, when the chart
    names a Prometheus.

- An InterceptorRoute (``http.keda.sh/v1beta1``): requests whose Host is this service's proxy
  name go to the server Service's port, ``scalingMetric.concurrency.targetValue`` =
  ``targetInFlight``, and the interceptor holds a request while no server is ready, for up to
  ``coldStartTimeoutSeconds`` (``timeouts.readiness``; then it answers 504).
- An ExternalName Service ``<name>-proxy`` pointing at the interceptor's proxy Service: clients
  send to ``http://<name>-proxy.<namespace>.svc:<interceptor port>/v1`` (``status.url``) and their
  Host header is then the route's host by itself, as in the add-on's own example. Routing is by
  host, not path, because the interceptor forwards the path unchanged and vLLM serves ``/v1`` at
  its root. Only namespace-qualified names are routed: a bare ``<name>-proxy`` would be the same
  host for services of the same name in two namespaces.

Without the add-on (it is needed only for ``minReplicas: 0``), the ScaledObject has the prometheus
trigger alone and clients use the server Service as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmfab.api.inference_service import Autoscaling, InferenceService
from llmfab.operator.builders.common import Manifest, child_name, metadata
from llmfab.operator.builders.inference import service_name
from llmfab.operator.settings import OperatorSettings

COMPONENT = "autoscaler"
SCALED_OBJECT = ("keda.sh/v1alpha1", "ScaledObject")
INTERCEPTOR_ROUTE = ("http.keda.sh/v1beta1", "InterceptorRoute")
QUEUE_METRICS = "vllm:num_requests_(running|waiting)"
KEDA_INSTALL = ("helm repo add kedacore https://kedacore.github.io/charts && "
                "helm install keda kedacore/keda --namespace keda --create-namespace")
HTTP_ADD_ON_INSTALL = "helm install http-add-on kedacore/keda-add-ons-http --namespace keda"


@dataclass(frozen=True)
class KedaApis:
    """Which of KEDA's kinds the cluster serves (API discovery)."""

    scaled_objects: bool = False
    interceptor_routes: bool = False


def autoscaling(res: InferenceService) -> Autoscaling:
    if res.spec.autoscaling is None:
        raise ValueError(f"{res.key}: spec.autoscaling is not set")
    return res.spec.autoscaling


def uses_interceptor(apis: KedaApis) -> bool:
    """Requests go through the HTTP add-on's interceptor wherever it is installed: the same URL
    whatever minReplicas is, and request concurrency as a signal, not only vLLM's queue."""
    return apis.interceptor_routes


def proxy_service_name(res: InferenceService) -> str:
    return child_name(res, "proxy")


def proxy_hosts(res: InferenceService, settings: OperatorSettings) -> list[str]:
    """The Host values the InterceptorRoute matches: the proxy Service's namespace-qualified names."""
    short = f"{proxy_service_name(res)}.{res.metadata.namespace}.svc"
    return [short, f"{short}.{settings.cluster_domain}"]


def proxy_url(res: InferenceService, settings: OperatorSettings) -> str:
    """The OpenAI base URL through the interceptor (``status.url`` of an autoscaled service)."""
    return f"http://{proxy_hosts(res, settings)[0]}:{settings.keda_interceptor_port}/v1"


def queue_query(res: InferenceService) -> str:
    """Requests running and waiting in this service's vLLM servers, summed over its pods."""
    model = res.spec.server.served_model_name or res.name
    return (f'sum({{__name__=~"{QUEUE_METRICS}",namespace="{res.metadata.namespace}",'
            f'model_name="{model}"}})')


def _triggers(res: InferenceService, settings: OperatorSettings, interceptor: bool) -> list[dict[str, Any]]:
    target = str(autoscaling(res).target_in_flight)
    triggers: list[dict[str, Any]] = []
    if interceptor:
        triggers.append({"type": "external-push", "name": "requests-in-flight", "metadata": {
            "scalerAddress": settings.keda_scaler_address, "interceptorRoute": child_name(res)}})
    if settings.keda_prometheus_address:
        triggers.append({"type": "prometheus", "name": "vllm-queue", "metadata": {
            "serverAddress": settings.keda_prometheus_address, "query": queue_query(res), "threshold": target}})
    return triggers


def _owned(res: InferenceService, type_: tuple[str, str], spec: dict[str, Any]) -> Manifest:
    """One of KEDA's objects for ``res``, named as its Deployment, owned and labelled like every child."""
    api_version, kind = type_
    return {"apiVersion": api_version, "kind": kind,
            "metadata": metadata(res, child_name(res), COMPONENT, with_revision=False), "spec": spec}


def build_scaled_object(res: InferenceService, settings: OperatorSettings, interceptor: bool) -> Manifest:
    a = autoscaling(res)
    return _owned(res, SCALED_OBJECT, {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": child_name(res)},
        "minReplicaCount": a.min_replicas,
        "maxReplicaCount": a.max_replicas,
        "cooldownPeriod": a.idle_seconds,
        "initialCooldownPeriod": a.idle_seconds,
        "triggers": _triggers(res, settings, interceptor),
    })


def build_interceptor_route(res: InferenceService, settings: OperatorSettings) -> Manifest:
    a = autoscaling(res)
    return _owned(res, INTERCEPTOR_ROUTE, {
        "target": {"service": service_name(res), "port": res.spec.server.port},
        "rules": [{"hosts": proxy_hosts(res, settings)}],
        "scalingMetric": {"concurrency": {"targetValue": a.target_in_flight}},
        "timeouts": {"readiness": f"{a.cold_start_timeout_seconds}s"},
    })


def build_proxy_service(res: InferenceService, settings: OperatorSettings) -> Manifest:
    interceptor = (f"{settings.keda_interceptor_service}.{settings.keda_interceptor_namespace}.svc."
                   f"{settings.cluster_domain}")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(res, proxy_service_name(res), COMPONENT, with_revision=False),
        "spec": {
            "type": "ExternalName",
            "externalName": interceptor,
            "ports": [{"name": "http", "port": settings.keda_interceptor_port, "protocol": "TCP"}],
        },
    }


def build_autoscaler(res: InferenceService, settings: OperatorSettings, apis: KedaApis) -> list[Manifest]:
    """KEDA's objects for ``res``, in creation order (the route before the ScaledObject naming it)."""
    interceptor = uses_interceptor(apis)
    children = [build_interceptor_route(res, settings), build_proxy_service(res, settings)] if interceptor else []
    return [*children, build_scaled_object(res, settings, interceptor)]


def autoscaling_problems(res: InferenceService, settings: OperatorSettings, apis: KedaApis) -> list[str]:
    """Why this cluster cannot autoscale ``res`` (empty: it can), each naming what to install or set."""
    if res.spec.autoscaling is None:
        return []
    fixed = "or remove spec.autoscaling and set spec.replicas"
    if not settings.keda_enabled:
        return ["spec.autoscaling: this cluster's llmfab chart has autoscaling.keda.enabled=false, so nothing "
                f"would scale the service; install the chart with autoscaling.keda.enabled=true, {fixed}"]
    if not apis.scaled_objects:
        add_on = f", and for minReplicas 0 its HTTP add-on: {HTTP_ADD_ON_INSTALL}" if (
            res.spec.autoscaling.min_replicas == 0) else ""
        return [f"spec.autoscaling: KEDA is not installed on this cluster (no scaledobjects.keda.sh); "
                f"install it: {KEDA_INSTALL}{add_on}; {fixed}"]
    if res.spec.autoscaling.min_replicas == 0 and not apis.interceptor_routes:
        return ["spec.autoscaling.minReplicas: 0 needs KEDA's HTTP add-on, v0.14 or newer "
                "(interceptorroutes.http.keda.sh), to hold requests while a server starts; install it: "
                f"{HTTP_ADD_ON_INSTALL}; or set minReplicas: 1"]
    if not uses_interceptor(apis) and not settings.keda_prometheus_address:
        return ["spec.autoscaling: nothing to scale on: KEDA's HTTP add-on is not installed and the chart's "
                f"autoscaling.keda.prometheusAddress is empty; install the add-on ({HTTP_ADD_ON_INSTALL}) or "
                f"name the Prometheus that scrapes vLLM in autoscaling.keda.prometheusAddress, {fixed}"]
    return []
