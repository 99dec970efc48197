"""KEDA's ScaledObject and the HTTP add-on's InterceptorRoute admitted against their projects'
published CRDs (third_party/, unmodified): the same schema and CEL checks as llmfab's own CRDs."""

from __future__ import annotations

import copy
from typing import Any

from .apiserver import HTTP_ADD_ON_CRD, KEDA_CRD, KubeAPIServer
from .conftest import KubeHTTP

SO = "/apis/keda.sh/v1alpha1/namespaces/default/scaledobjects"
IR = "/apis/http.keda.sh/v1beta1/namespaces/default/interceptorroutes"

SCALED_OBJECT = {
    "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "chat"},
    "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat"},
             "minReplicaCount": 0, "maxReplicaCount": 2,
             "triggers": [{"type": "external-push", "metadata": {"interceptorRoute": "chat",
                                                                  "scalerAddress": "scaler.keda:9090"}}]},
}
ROUTE = {
    "apiVersion": "http.keda.sh/v1beta1", "kind": "InterceptorRoute", "metadata": {"name": "chat"},
    "spec": {"target": {"service": "chat", "port": 8000}, "scalingMetric": {"concurrency": {"targetValue": 4}},
             "rules": [{"hosts": ["chat-proxy.default.svc"]}], "timeouts": {"readiness": "600s"}},
}


def install_keda(server: KubeAPIServer) -> None:
    for crd in (KEDA_CRD, HTTP_ADD_ON_CRD):
        server.install_crd(crd)


def with_spec(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``obj`` under another name (the valid one is stored already) with ``changes``."""
    out = copy.deepcopy(obj)
    out["metadata"]["name"] = "changed"
    out["spec"].update(changes)
    return out


def causes(answer: Any) -> list[str]:
    assert answer.status_code == 422, answer.text
    return [f"{c['field']}: {c['message']}" for c in answer.json()["details"]["causes"]]


def test_the_kinds_are_served_once_their_crds_are_installed(kube_apiserver: KubeAPIServer, api: KubeHTTP) -> None:
    assert api.get("/apis/keda.sh/v1alpha1").status_code == 404
    install_keda(kube_apiserver)
    names = {r["name"] for r in api.get("/apis/keda.sh/v1alpha1").json()["resources"]}
    assert {"scaledobjects", "scaledobjects/status"} <= names
    assert "interceptorroutes" in {r["name"] for r in api.get("/apis/http.keda.sh/v1beta1").json()["resources"]}


def test_a_valid_scaled_object_is_stored_and_bad_ones_are_refused(kube_apiserver: KubeAPIServer,
                                                                  api: KubeHTTP) -> None:
    install_keda(kube_apiserver)
    assert api.post(SO, SCALED_OBJECT).status_code == 201
    assert causes(api.post(SO, with_spec(SCALED_OBJECT, minReplicaCount=3))) == [
        'spec: Invalid value: "object": minReplicaCount must be less than or equal to maxReplicaCount']
    numeric = with_spec(SCALED_OBJECT, triggers=[{"type": "prometheus", "metadata": {"threshold": 16}}])
    assert causes(api.post(SO, numeric))[0].startswith("spec.triggers[0].metadata.threshold: Invalid value")
    assert causes(api.post(SO, with_spec(SCALED_OBJECT, triggers=[]))) == [
        "spec.triggers: Invalid value: 0: spec.triggers in body should have at least 1 items"]


def test_a_valid_interceptor_route_is_stored_and_bad_ones_are_refused(kube_apiserver: KubeAPIServer,
                                                                      api: KubeHTTP) -> None:
    install_keda(kube_apiserver)
    assert api.post(IR, ROUTE).status_code == 201
    both = with_spec(ROUTE, target={"service": "chat", "port": 8000, "portName": "http"})
    assert causes(api.post(IR, both)) == [
        "spec.target: Invalid value: \"object\": exactly one of 'port' or 'portName' must be set"]
    assert causes(api.post(IR, with_spec(ROUTE, scalingMetric={}))) == [
        "spec.scalingMetric: Invalid value: \"object\": at least one of 'concurrency' or 'requestRate' must be set"]
    assert causes(api.post(IR, with_spec(ROUTE, scalingMetric={"concurrency": {"targetValue": 0}}))) == [
        "spec.scalingMetric.concurrency.targetValue: Invalid value: 0: "
        "spec.scalingMetric.concurrency.targetValue in body should be greater than or equal to 1"]
