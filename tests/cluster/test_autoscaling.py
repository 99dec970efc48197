"""spec.autoscaling through the operator against the test API server with KEDA's published CRDs
(tests/kube/third_party/): the ScaledObject, InterceptorRoute and proxy Service it builds and owns,
updates and removes; a Deployment whose replicas the autoscaler owns; the refusal on a cluster
without KEDA; and status.scale as the test plays KEDA (scaling the Deployment) and the kubelet
(making its pods ready), with the Deployment controller stand-in making the pods."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from prometheus_client import generate_latest

from llmfab.operator import metrics, rbac
from llmfab.operator.kube import USER_AGENT, Kube
from llmfab.operator.settings import OperatorSettings
from tests.cluster.kubelet import wait_for
from tests.cluster.operator_runner import FAST, run_operator
from tests.cluster.test_operator import conditions, rbac_call, status
from tests.kube.apiserver import HTTP_ADD_ON_CRD, KEDA_CRD, KubeAPIServer

PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
SETTINGS = FAST.model_copy(update={"keda_prometheus_address": PROMETHEUS})
SERVICE = {"apiVersion": "llmfab.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "chat"},
           "spec": {"model": {"path": "/models/tiny"}, "release": {"license": "apache-2.0"},
                    "quantization": {"method": "none"}, "eval": {"enabled": False},
                    "autoscaling": {"minReplicas": 0, "maxReplicas": 2, "targetInFlight": 4, "idleSeconds": 60}}}
LIS = "/apis/llmfab.dev/v1alpha1/namespaces/default/inferenceservices"


def install_keda(server: KubeAPIServer) -> None:
    """What `helm install kedacore/keda` and `kedacore/keda-add-ons-http` add to the API: their CRDs."""
    server.install_crd(KEDA_CRD)
    server.install_crd(HTTP_ADD_ON_CRD)


@pytest.fixture
def keda_operator(kube: Kube) -> Iterator[KopfRunner]:
    with run_operator(kube, SETTINGS) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert "Traceback" not in runner.output, runner.output


def service(name: str = "chat", **autoscaling: Any) -> dict[str, Any]:
    out = copy.deepcopy(SERVICE)
    out["metadata"]["name"] = name
    out["spec"]["autoscaling"].update(autoscaling)
    return out


def find(server: KubeAPIServer, resource: str, name: str) -> dict[str, Any] | None:
    return next((o for o in server.items(resource) if o["metadata"]["name"] == name), None)


def scale_deployment(server: KubeAPIServer, name: str, replicas: int) -> None:
    """What KEDA (its HPA, or its scale from and to zero) does: write the Deployment's replicas."""
    deployments = server.resource_type("deployments")
    live = server.read("deployments", name)
    server.store.update(deployments, "default", name, {**live, "spec": {**live["spec"], "replicas": replicas}})


def ready_pods(server: KubeAPIServer, name: str) -> None:
    """The kubelet's part: every pending server pod of ``name`` runs and answers its probe."""
    pods = wait_for(lambda: [p for p in server.items("pods", labels=f"app.kubernetes.io/instance={name}")
                             if not p["metadata"].get("deletionTimestamp")], 10, f"the pods of {name}")
    for pod in pods:
        server.set_pod_phase(pod, "Running")


def scale_state(server: KubeAPIServer, name: str, state: str) -> dict[str, Any] | None:
    s = status(server, "inferenceservices", name)
    return s if (s.get("scale") or {}).get("state") == state else None


def operator_writes(server: KubeAPIServer, since: int, resource: str) -> list[Any]:
    return [r for r in server.request_log[since:] if r.user_agent.startswith(USER_AGENT) and r.resource == resource
            and r.verb in ("create", "update", "patch", "delete")]


def test_kedas_objects_are_built_owned_admitted_updated_and_removed_with_autoscaling(
    kube_apiserver: KubeAPIServer, keda_operator: Any, kubectl: Any
) -> None:
    install_keda(kube_apiserver)
    uid = kube_apiserver.create(service())["metadata"]["uid"]
    so = wait_for(lambda: find(kube_apiserver, "scaledobjects", "chat"), 20, "the ScaledObject")
    route = kube_apiserver.read("interceptorroutes", "chat")
    proxy = kube_apiserver.read("services", "chat-proxy")
    for child in (so, route, proxy):
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid
    created = {(r.resource, r.code) for r in kube_apiserver.request_log if r.verb == "create"}
    assert {("scaledobjects", 201), ("interceptorroutes", 201)} <= created  # admitted by KEDA's own schemas
    assert so["spec"]["maxReplicaCount"] == 2 and route["spec"]["scalingMetric"]["concurrency"]["targetValue"] == 4
    assert [t["type"] for t in so["spec"]["triggers"]] == ["external-push", "prometheus"]
    assert proxy["spec"]["type"] == "ExternalName"
    s = wait_for(lambda: status(kube_apiserver, "inferenceservices", "chat").get("url") and
                 status(kube_apiserver, "inferenceservices", "chat"), 10, "the URL")
    assert s["url"] == "http://chat-proxy.default.svc:8080/v1"
    assert kube_apiserver.read("deployments", "chat")["spec"]["replicas"] == 1  # the server's default: one to start

    kubectl("patch", "lis", "chat", "--type=merge", "-p", '{"spec": {"autoscaling": {"maxReplicas": 3, "targetInFlight": 8}}}')
    wait_for(lambda: kube_apiserver.read("scaledobjects", "chat")["spec"]["maxReplicaCount"] == 3, 15, "the new max")
    wait_for(lambda: kube_apiserver.read("interceptorroutes", "chat")["spec"]["scalingMetric"]["concurrency"]
             ["targetValue"] == 8, 15, "the new target")
    assert kube_apiserver.read("scaledobjects", "chat")["spec"]["triggers"][1]["metadata"]["threshold"] == "8"

    kubectl("patch", "lis", "chat", "--type=merge", "-p", '{"spec": {"autoscaling": null, "replicas": 2}}')
    wait_for(lambda: not find(kube_apiserver, "scaledobjects", "chat") and not find(
        kube_apiserver, "interceptorroutes", "chat") and not find(kube_apiserver, "services", "chat-proxy"), 15,
        "KEDA's objects removed")
    s = wait_for(lambda: (x := status(kube_apiserver, "inferenceservices", "chat")) and "scale" not in x and x,
                 15, "status.scale cleared")
    assert s["url"] == "http://chat.default.svc:8000/v1"
    assert kube_apiserver.read("deployments", "chat")["spec"]["replicas"] == 2  # fixed replicas are back
    assert find(kube_apiserver, "services", "chat")  # the server Service stays

    calls = {rbac_call(r) for r in kube_apiserver.request_log if r.user_agent.startswith(("kopf/", USER_AGENT))
             and r.resource}
    assert {("keda.sh", "scaledobjects", "create"), ("http.keda.sh", "interceptorroutes", "delete")} <= calls
    assert {c for c in calls if not rbac.allows(rbac.operator_rules(), *c)} == set()


def test_the_autoscaler_owns_the_deployments_replicas(kube_apiserver: KubeAPIServer, keda_operator: Any) -> None:
    install_keda(kube_apiserver)
    kube_apiserver.create(service())
    wait_for(lambda: find(kube_apiserver, "scaledobjects", "chat"), 20, "the ScaledObject")
    scale_deployment(kube_apiserver, "chat", 2)
    since = len(kube_apiserver.request_log)

    def reconciled_thrice() -> bool:  # each pass asks discovery for KEDA's group once
        return sum(1 for r in kube_apiserver.request_log[since:] if r.path == "/apis/keda.sh/v1alpha1") >= 3
    wait_for(reconciled_thrice, 15, "three more reconciles of the service")
    assert kube_apiserver.read("deployments", "chat")["spec"]["replicas"] == 2
    assert operator_writes(kube_apiserver, since, "deployments") == []  # nothing patched back


def test_autoscaling_on_a_cluster_without_keda_fails_naming_the_installs_then_runs_once_it_is_there(
    kube_apiserver: KubeAPIServer, keda_operator: Any
) -> None:
    kube_apiserver.create(service())
    s = wait_for(lambda: status(kube_apiserver, "inferenceservices", "chat").get("phase") == "Failed" and
                 status(kube_apiserver, "inferenceservices", "chat"), 15, "Failed")
    assert conditions(s)["Failed"] == ("True", "AutoscalingUnavailable")
    assert "KEDA is not installed on this cluster (no scaledobjects.keda.sh)" in s["message"]
    assert "helm install keda kedacore/keda" in s["message"]
    assert "helm install http-add-on kedacore/keda-add-ons-http" in s["message"]
    assert not kube_apiserver.items("deployments")
    wait_for(lambda: any(e["reason"] == "AutoscalingUnavailable" for e in kube_apiserver.items("events")), 10,
             "the Warning event")
    install_keda(kube_apiserver)  # the next look finds it: no operator restart
    wait_for(lambda: find(kube_apiserver, "scaledobjects", "chat") and kube_apiserver.items("deployments"), 20,
             "the service built once KEDA is installed")
    wait_for(lambda: status(kube_apiserver, "inferenceservices", "chat").get("phase") == "Running", 10, "Running")


def test_status_scale_follows_the_deployment_idle_waking_ready_and_times_the_wake(
    kube_apiserver: KubeAPIServer, keda_operator: Any, kubectl: Any
) -> None:
    install_keda(kube_apiserver)
    kube_apiserver.create(service("wake"))
    s = wait_for(lambda: scale_state(kube_apiserver, "wake", "Waking"), 20, "Waking (the first server starting)")
    assert conditions(s)["Ready"] == ("False", "Waking") and "lastColdStartTime" not in s["scale"]
    ready_pods(kube_apiserver, "wake")
    s = wait_for(lambda: scale_state(kube_apiserver, "wake", "Ready"), 15, "Ready")
    assert s["scale"]["coldStarts"] == 0 and s["readyReplicas"] == 1 and conditions(s)["Ready"] == ("True", "Serving")

    scale_deployment(kube_apiserver, "wake", 0)  # idle for idleSeconds: KEDA scales to zero
    s = wait_for(lambda: scale_state(kube_apiserver, "wake", "Idle"), 15, "Idle")
    assert conditions(s)["Ready"] == ("True", "Idle") and s["replicas"] == 0
    scale_deployment(kube_apiserver, "wake", 1)  # a request at the interceptor: KEDA scales from zero
    s = wait_for(lambda: scale_state(kube_apiserver, "wake", "Waking"), 15, "Waking")
    [pod] = kube_apiserver.items("pods", labels="app.kubernetes.io/instance=wake")
    assert s["scale"]["lastColdStartTime"] == pod["metadata"]["creationTimestamp"]
    assert "requests to http://wake-proxy.default.svc:8080/v1 are held" in s["message"]
    ready_pods(kube_apiserver, "wake")
    s = wait_for(lambda: scale_state(kube_apiserver, "wake", "Ready"), 15, "Ready after the wake")
    assert s["scale"]["coldStarts"] == 1 and s["scale"]["lastColdStartSeconds"] >= 0
    assert "woke from zero in" in s["message"]
    table = kubectl("get", "lis", "wake").stdout
    print(table)
    header, row = table.splitlines()
    assert header.split() == ["NAME", "PHASE", "URL", "READY", "STATE", "GPU-H", "COST", "AGE"]
    assert row.split()[:5] == ["wake", "Running", "http://wake-proxy.default.svc:8080/v1", "1", "Ready"]

    def reasons() -> list[str]:
        return [e["reason"] for e in sorted(kube_apiserver.items("events"), key=lambda e: e["metadata"]["name"])
                if e["involvedObject"]["name"] == "wake"]
    wait_for(lambda: reasons().count("Serving") == 2, 10, "the events of each transition")
    assert {"Waking", "Serving", "Idle"} <= set(reasons())
    exported = generate_latest(metrics.REGISTRY).decode()
    assert 'llmfab_inference_cold_starts_total{resource="wake",resource_namespace="default"} 1.0' in exported
    assert 'llmfab_inference_replicas{resource="wake",resource_namespace="default",state="ready"} 1.0' in exported
    assert 'llmfab_inference_cold_start_seconds_count{resource="wake",resource_namespace="default"} 1.0' in exported


def test_a_wake_on_a_cluster_with_only_keda_and_prometheus_serves_at_the_service(
    kube_apiserver: KubeAPIServer, kube: Kube
) -> None:
    """minReplicas 1 needs no HTTP add-on: the ScaledObject scales on vLLM's queue alone."""
    kube_apiserver.install_crd(KEDA_CRD)
    with run_operator(kube, SETTINGS):
        kube_apiserver.create(service(minReplicas=1))
        so = wait_for(lambda: find(kube_apiserver, "scaledobjects", "chat"), 20, "the ScaledObject")
        assert [t["type"] for t in so["spec"]["triggers"]] == ["prometheus"]
        s = wait_for(lambda: status(kube_apiserver, "inferenceservices", "chat").get("url") and
                     status(kube_apiserver, "inferenceservices", "chat"), 10, "the URL")
        assert s["url"] == "http://chat.default.svc:8000/v1" and not find(kube_apiserver, "services", "chat-proxy")
    with run_operator(kube, OperatorSettings(resync_seconds=0.3)):  # no Prometheus named: nothing to scale on
        kube_apiserver.create(service("bare", minReplicas=1))
        s = wait_for(lambda: status(kube_apiserver, "inferenceservices", "bare").get("phase") == "Failed" and
                     status(kube_apiserver, "inferenceservices", "bare"), 15, "Failed")
        assert "autoscaling.keda.prometheusAddress is empty" in s["message"]
