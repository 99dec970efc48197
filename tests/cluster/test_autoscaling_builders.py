"""spec.autoscaling on a cluster, without a server: the KEDA objects the builders emit (checked
against KEDA's own published CRD schemas, tests/kube/third_party/), what the operator refuses,
the scale state from what the cluster shows, and the reconcile decision around them."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from llmfab.operator import metrics
from llmfab.operator.builders.autoscaling import (
    KedaApis,
    autoscaling_problems,
    build_autoscaler,
    queue_query,
)
from llmfab.operator.builders.inference import build_deployment
from llmfab.operator.reconcile import Observed, decide, dependency_problem
from llmfab.operator.scale_state import next_scale
from llmfab.operator.settings import OperatorSettings
from tests.cluster.test_builders import assert_child_conventions, assert_valid, resource
from tests.cluster.test_reconcile import settle
from tests.kube.apiserver import HTTP_ADD_ON_CRD, KEDA_CRD, _manifest
from tests.kube.crd_schema import admission_causes, apply_defaults, prune

PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"
SETTINGS = OperatorSettings(keda_prometheus_address=PROMETHEUS)
ALL = KedaApis(scaled_objects=True, interceptor_routes=True)
AUTO = {"model": {"path": "/m"}, "quantization": {"method": "none"}, "eval": {"enabled": False},
        "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "targetInFlight": 8, "idleSeconds": 120,
                        "coldStartTimeoutSeconds": 900}}


def autoscaled(**changes: Any) -> Any:
    spec = copy.deepcopy(AUTO)
    spec["autoscaling"].update(changes)
    return resource("InferenceService", spec)


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


def admitted(manifest: dict[str, Any], crd_path: Any) -> list[str]:
    """What the API server would refuse ``manifest`` for, under the CRD its project publishes."""
    schema = _manifest(str(crd_path))["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    obj = copy.deepcopy(manifest)
    unknown = prune(schema, obj)
    apply_defaults(schema, obj)
    return unknown + [str(c) for c in admission_causes(schema, obj)]


def test_the_scaled_object_targets_the_server_deployment_with_both_triggers() -> None:
    so = by_kind(build_autoscaler(autoscaled(), SETTINGS, ALL))["ScaledObject"]
    assert_child_conventions(so, "autoscaler")
    assert so["metadata"]["name"] == "demo" and so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (0, 3, 120)
    push, queue = spec["triggers"]
    assert push == {"type": "external-push", "name": "requests-in-flight",
                    "metadata": {"scalerAddress": "keda-add-ons-http-external-scaler.keda:9090",
                                 "interceptorRoute": "demo"}}
    assert queue["type"] == "prometheus" and queue["metadata"] == {
        "serverAddress": PROMETHEUS, "threshold": "8",
        "query": 'sum({__name__=~"vllm:num_requests_(running|waiting)",namespace="ml",model_name="demo"})'}
    assert admitted(so, KEDA_CRD) == []


def test_the_queue_query_names_the_served_model() -> None:
    res = resource("InferenceService", {**AUTO, "server": {"servedModelName": "tiny-chat"}})
    assert 'model_name="tiny-chat"' in queue_query(res)


def test_the_interceptor_route_sends_the_proxy_hosts_to_the_server_service() -> None:
    built = by_kind(build_autoscaler(autoscaled(), SETTINGS, ALL))
    route = built["InterceptorRoute"]
    assert_child_conventions(route, "autoscaler")
    assert route["apiVersion"] == "http.keda.sh/v1beta1" and route["metadata"]["name"] == "demo"
    assert route["spec"] == {
        "target": {"service": "demo", "port": 8000},
        "rules": [{"hosts": ["demo-proxy.ml.svc", "demo-proxy.ml.svc.cluster.local"]}],
        "scalingMetric": {"concurrency": {"targetValue": 8}},
        "timeouts": {"readiness": "900s"},
    }
    assert admitted(route, HTTP_ADD_ON_CRD) == []
    proxy = built["Service"]
    assert_child_conventions(proxy, "autoscaler")
    assert proxy["metadata"]["name"] == "demo-proxy"
    assert proxy["spec"] == {"type": "ExternalName",
                             "externalName": "keda-add-ons-http-interceptor-proxy.keda.svc.cluster.local",
                             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
    assert_valid(proxy)


def test_without_the_http_add_on_only_the_prometheus_trigger_scales() -> None:
    built = build_autoscaler(autoscaled(minReplicas=1), SETTINGS, KedaApis(scaled_objects=True))
    assert [m["kind"] for m in built] == ["ScaledObject"]
    assert [t["type"] for t in built[0]["spec"]["triggers"]] == ["prometheus"]
    without_prometheus = build_autoscaler(autoscaled(), OperatorSettings(), ALL)[-1]
    assert [t["type"] for t in without_prometheus["spec"]["triggers"]] == ["external-push"]


def test_the_deployment_of_an_autoscaled_service_leaves_replicas_to_keda() -> None:
    assert "replicas" not in build_deployment(autoscaled(), SETTINGS, False)["spec"]
    fixed = resource("InferenceService", {"model": {"path": "/m"}, "replicas": 2})
    assert build_deployment(fixed, SETTINGS, False)["spec"]["replicas"] == 2


@pytest.mark.parametrize(("settings", "apis", "min_replicas", "expected"), [
    (OperatorSettings(keda_enabled=False), ALL, 0, "autoscaling.keda.enabled=false"),
    (SETTINGS, KedaApis(), 0, "helm install keda kedacore/keda --namespace keda --create-namespace, and for "
                              "minReplicas 0 its HTTP add-on: helm install http-add-on kedacore/keda-add-ons-http"),
    (SETTINGS, KedaApis(), 1, "KEDA is not installed on this cluster (no scaledobjects.keda.sh)"),
    (SETTINGS, KedaApis(scaled_objects=True), 0, "minReplicas: 0 needs KEDA's HTTP add-on"),
    (OperatorSettings(), KedaApis(scaled_objects=True), 1, "autoscaling.keda.prometheusAddress is empty"),
], ids=["disabled", "no-keda", "no-keda-min-1", "no-add-on", "nothing-to-scale-on"])
def test_a_cluster_that_cannot_autoscale_is_named_with_what_to_install(
    settings: OperatorSettings, apis: KedaApis, min_replicas: int, expected: str
) -> None:
    [problem] = autoscaling_problems(autoscaled(minReplicas=min_replicas), settings, apis)
    assert problem.startswith("spec.autoscaling") and expected in problem


def test_what_a_cluster_with_keda_can_autoscale_is_not_refused() -> None:
    assert autoscaling_problems(autoscaled(), SETTINGS, ALL) == []
    assert autoscaling_problems(autoscaled(minReplicas=1), SETTINGS, KedaApis(scaled_objects=True)) == []
    assert autoscaling_problems(resource("InferenceService", {"model": {"path": "/m"}}), SETTINGS, KedaApis()) == []


# --- the scale state ------------------------------------------------------------------------------


def deployment(replicas: int, ready: int = 0) -> dict[str, Any]:
    return {"spec": {"replicas": replicas}, "status": {"readyReplicas": ready} if ready else {}}


def pod(created: str, ready_at: str | None = None) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True", "lastTransitionTime": ready_at}] if ready_at else []
    return {"metadata": {"name": f"p-{created}", "creationTimestamp": created}, "status": {"conditions": conditions}}


def test_a_wake_from_zero_is_timed_from_the_pods_creation_to_its_readiness() -> None:
    first = next_scale(None, deployment(1), [], "2026-12-07T10:00:00Z")
    assert first.scale == {"state": "Waking", "since": "2026-12-07T10:00:00Z", "coldStarts": 0}
    ready = next_scale(first.scale, deployment(1, ready=1), [pod("2026-12-07T10:00:00Z", "2026-12-07T10:00:40Z")],
                       "2026-12-07T10:00:45Z")
    assert ready.cold_start_seconds is None  # the first start is no wake from zero
    assert ready.scale["state"] == "Ready" and ready.scale["since"] == "2026-12-07T10:00:40Z"
    idle = next_scale(ready.scale, deployment(0), [], "2026-12-07T10:10:00Z")
    assert idle.scale["state"] == "Idle" and idle.scale["since"] == "2026-12-07T10:10:00Z"
    assert next_scale(idle.scale, deployment(0), [], "2026-12-07T10:20:00Z").scale == idle.scale  # nothing new
    woken = [pod("2026-12-07T10:30:02Z")]
    waking = next_scale(idle.scale, deployment(1), woken, "2026-12-07T10:30:05Z")  # seen 3 s late
    assert waking.scale["state"] == "Waking" and waking.scale["since"] == waking.scale["lastColdStartTime"] == (
        "2026-12-07T10:30:02Z")
    woken = [pod("2026-12-07T10:30:02Z", "2026-12-07T10:30:33Z")]
    done = next_scale(waking.scale, deployment(1, ready=1), woken, "2026-12-07T10:30:40Z")
    assert done.cold_start_seconds == 31.0
    assert done.scale == {"state": "Ready", "since": "2026-12-07T10:30:33Z", "coldStarts": 1,
                          "lastColdStartTime": "2026-12-07T10:30:02Z", "lastColdStartSeconds": 31.0}


def test_a_wake_seen_whole_between_two_looks_is_counted_and_a_lost_replica_is_not_a_cold_start() -> None:
    idle = {"state": "Idle", "since": "2026-12-07T10:00:00Z", "coldStarts": 2}
    seen = next_scale(idle, deployment(2, ready=1), [pod("2026-12-07T10:05:00Z", "2026-12-07T10:05:20Z"),
                                                     pod("2026-12-07T10:05:01Z")], "2026-12-07T10:05:30Z")
    assert (seen.scale["state"], seen.scale["coldStarts"], seen.cold_start_seconds) == ("Ready", 3, 20.0)
    lost = next_scale(seen.scale, deployment(2), [pod("2026-12-07T10:09:00Z")], "2026-12-07T10:09:05Z")
    assert lost.scale["state"] == "Waking" and lost.scale["lastColdStartTime"] == "2026-12-07T10:05:00Z"
    back = next_scale(lost.scale, deployment(2, ready=1), [pod("2026-12-07T10:09:00Z", "2026-12-07T10:09:30Z")],
                      "2026-12-07T10:09:35Z")
    assert back.cold_start_seconds is None and back.scale["coldStarts"] == 3


# --- the reconcile decision -------------------------------------------------------------------


def test_an_idle_service_is_ready_at_the_proxy_url_and_its_children_are_kedas() -> None:
    observed = Observed(keda=ALL, deployment=deployment(0), status={"scale": {"state": "Ready", "coldStarts": 0}})
    d = decide(autoscaled(), observed, SETTINGS)
    assert {f"{m['kind']}/{m['metadata']['name']}" for m in d.apply} >= {
        "ScaledObject/demo", "InterceptorRoute/demo", "Service/demo-proxy", "Deployment/demo", "Service/demo"}
    assert d.status["url"] == "http://demo-proxy.ml.svc:8080/v1"
    assert d.status["scale"]["state"] == "Idle" and d.status["phase"] == "Running"
    ready = d.status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Idle")
    assert ("Normal", "Idle", "idle at 0 replicas; the next request to http://demo-proxy.ml.svc:8080/v1 wakes a "
                              "server") in d.events


def test_turning_autoscaling_off_deletes_kedas_objects_and_clears_the_scale_state() -> None:
    on = decide(autoscaled(), Observed(keda=ALL, deployment=deployment(0)), SETTINGS)
    children = [{**m, "metadata": {**m["metadata"], "uid": "x"}} for m in on.apply
                if m["kind"] in ("ScaledObject", "InterceptorRoute") or m["metadata"]["name"] == "demo-proxy"]
    fixed = resource("InferenceService", {**AUTO, "autoscaling": None, "replicas": 1})
    d = decide(fixed, Observed(keda=ALL, deployment=deployment(0), autoscaler=children,
                               status=settle({}, on)), SETTINGS)
    assert sorted(c["kind"] for c in d.delete) == ["InterceptorRoute", "ScaledObject", "Service"]
    assert d.status["scale"] is None and d.status["url"] == "http://demo.ml.svc:8000/v1"
    [dep] = [m for m in d.apply if m["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 1


def test_autoscaling_without_keda_fails_with_the_reason_and_runs_nothing() -> None:
    d = decide(autoscaled(), Observed(keda=KedaApis(), deployment={"apiVersion": "apps/v1", "kind": "Deployment",
                                                                    "metadata": {"name": "demo"}}), SETTINGS)
    assert d.status["phase"] == "Failed" and not d.apply
    assert {c["type"]: c["reason"] for c in d.status["conditions"]}["Failed"] == "AutoscalingUnavailable"
    assert "helm install keda kedacore/keda" in d.status["message"]
    assert [c["kind"] for c in d.delete] == ["Deployment"]


def test_an_idle_service_is_a_usable_dependency_and_a_waking_one_is_not() -> None:
    """A RewardModel reading a service's feedback store need not wake it."""
    idle = {"status": {"readyReplicas": 0, "scale": {"state": "Idle"}}}
    waking = {"status": {"readyReplicas": 0, "scale": {"state": "Waking"}}}
    assert dependency_problem("InferenceService/chat", idle) is None
    assert dependency_problem("InferenceService/chat", waking) == "InferenceService/chat is not serving yet"


def test_the_operators_replica_series_exist_only_while_a_deployment_does() -> None:
    metrics.observe_serving("ml", "gauged", deployment(2, ready=1), None)
    exported = generate_latest(metrics.REGISTRY).decode()
    assert 'llmfab_inference_replicas{resource="gauged",resource_namespace="ml",state="desired"} 2.0' in exported
    metrics.observe_serving("ml", "gauged", None, None)  # stopped (refused) or not serving yet
    assert 'resource="gauged"' not in generate_latest(metrics.REGISTRY).decode()


def test_the_queue_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool has no offline query parser, but it parses a rule file's expressions."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not on PATH: run scripts/install_prometheus.sh")
    rules = tmp_path / "queue.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "keda", "rules": [
        {"record": "llmfab:check:queue", "expr": queue_query(autoscaled())}]}]}))
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
