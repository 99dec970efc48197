"""Issue 19 in the builders and the reconcile decision, on plain dicts: the feedback token from a
Secret, the open app refused on a cluster, one writer of the feedback store, no ServiceAccount
token in the serving pod, and the chart's pod policy (allow-lists of what a resource may set)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from llmfab.operator.builders.common import build_spec_config_map
from llmfab.operator.builders.inference import build_deployment
from llmfab.operator.builders.refusals import pod_policy_problems, refusals
from llmfab.operator.reconcile import Observed, decide
from llmfab.operator.settings import OperatorSettings
from tests.cluster.test_builders import RUN, SETTINGS, assert_valid, env_of, resource

SERVE = {"model": {"path": "/m"}, "quantization": {"method": "none"}, "eval": {"enabled": False}}
TOKEN = {"enabled": True, "tokenSecret": {"name": "fb-token", "key": "phone"}}


def failed(d: Any) -> tuple[str, str]:
    assert d.apply == [] and d.status["phase"] == "Failed", d
    return {c["type"]: c["reason"] for c in d.status["conditions"]}["Failed"], d.status["message"]


def test_the_feedback_token_comes_from_a_secret_and_is_in_no_manifest() -> None:
    svc = resource("InferenceService", {**SERVE, "feedback": TOKEN})
    dep = build_deployment(svc, SETTINGS, use_service_monitor=False)
    assert_valid(dep)
    pod = dep["spec"]["template"]["spec"]
    assert env_of(pod)["LLMFAB_FEEDBACK_TOKEN"] == {"secretKeyRef": {"name": "fb-token", "key": "phone"}}
    # What the manifests and the spec ConfigMap carry is the Secret's name, never a token.
    assert "tokenSecret" in build_spec_config_map(svc)["data"]["spec.yaml"]
    named = resource("InferenceService", {**SERVE, "feedback": {**TOKEN, "tokenEnv": "FB"}})
    assert env_of(build_deployment(named, SETTINGS, False)["spec"]["template"]["spec"])["FB"]["secretKeyRef"]
    off = resource("InferenceService", {**SERVE, "feedback": {**TOKEN, "enabled": False}})
    assert "LLMFAB_FEEDBACK_TOKEN" not in env_of(build_deployment(off, SETTINGS, False)["spec"]["template"]["spec"])


def test_a_service_that_writes_feedback_recreates_its_pod_instead_of_surging_a_second_writer() -> None:
    on = build_deployment(resource("InferenceService", {**SERVE, "feedback": TOKEN}), SETTINGS, False)
    assert on["spec"]["strategy"] == {"type": "Recreate", "rollingUpdate": None}
    assert_valid(on)
    off = build_deployment(resource("InferenceService", SERVE), SETTINGS, False)
    assert off["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def test_the_serving_pod_mounts_no_service_account_token() -> None:
    pod = build_deployment(resource("InferenceService", SERVE), SETTINGS, False)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert env_of(pod)["LLMFAB_STATUS"] == "off"  # it reports nothing to the API server


def test_an_open_feedback_app_fails_on_the_cluster_naming_token_secret_and_the_fix() -> None:
    reason, message = failed(decide(resource("InferenceService", {**SERVE, "feedback": {"enabled": True}}),
                                    Observed(), SETTINGS))
    assert reason == "InsecureSpec"
    assert message.startswith("spec.feedback.tokenSecret: a feedback app without a token")
    assert "kubectl create secret generic" in message and "allowAnonymous: true" in message
    anonymous = resource("InferenceService", {**SERVE, "feedback": {"enabled": True, "allowAnonymous": True}})
    assert decide(anonymous, Observed(), SETTINGS).status["phase"] == "Running"
    assert decide(resource("InferenceService", {**SERVE, "feedback": TOKEN}), Observed(), SETTINGS).apply


def test_a_plain_text_feedback_token_in_pod_env_fails_naming_the_field() -> None:
    plain = {**SERVE, "feedback": TOKEN, "pod": {"env": [{"name": "LLMFAB_FEEDBACK_TOKEN", "value": "hunter2"}]}}
    reason, message = failed(decide(resource("InferenceService", plain), Observed(), SETTINGS))
    assert reason == "InsecureSpec" and message.startswith("spec.pod.env: LLMFAB_FEEDBACK_TOKEN")
    assert "hunter2" not in message


def test_feedback_on_a_read_write_many_artifact_volume_fails_saying_why() -> None:
    rwx = OperatorSettings(artifacts_access_mode="ReadWriteMany")
    svc = resource("InferenceService", {**SERVE, "feedback": TOKEN})
    reason, message = failed(decide(svc, Observed(), rwx))
    assert reason == "SharedFeedbackStore"
    assert message.startswith("spec.feedback.enabled: the feedback store is SQLite in WAL mode")
    assert "ReadWriteMany" in message and "spec.storage.claimName" in message
    chart_claim = resource("InferenceService", {**SERVE, "feedback": TOKEN, "storage": {"claimName": "llmfab-artifacts"}})
    assert refusals(chart_claim, rwx)  # naming the chart's claim itself changes nothing
    own_claim = resource("InferenceService", {**SERVE, "feedback": TOKEN, "storage": {"claimName": "fb-rwo"}})
    assert refusals(own_claim, rwx) == []
    assert refusals(resource("InferenceService", SERVE), rwx) == []


POLICY = OperatorSettings(
    runtime_class_name="nvidia",
    allowed_images=["ghcr.io/llmfab/*"], allowed_runtime_classes=["nvidia"], allowed_priority_classes=[],
    allowed_claims=["team-a-*"], allowed_toleration_keys=["nvidia.com/gpu"],
)


@pytest.mark.parametrize(("pod", "storage", "needle"), [
    ({"image": "evil.example/miner:1"}, {}, "spec.pod.image: 'evil.example/miner:1' is not allowed on this "
     "cluster (podPolicy.allowedImages: ghcr.io/llmfab/*)"),
    ({"runtimeClassName": "runc-privileged"}, {}, "spec.pod.runtimeClassName: 'runc-privileged' is not allowed "
     "on this cluster (podPolicy.allowedRuntimeClasses: nvidia)"),
    ({"priorityClassName": "system-node-critical"}, {}, "spec.pod.priorityClassName: 'system-node-critical' is "
     "not allowed on this cluster (podPolicy.allowedPriorityClasses: none)"),
    ({}, {"claimName": "team-b-models"}, "spec.storage.claimName: 'team-b-models' is not allowed on this cluster "
     "(podPolicy.allowedClaims: team-a-*)"),
    ({"tolerations": [{"operator": "Exists"}]}, {}, "spec.pod.tolerations[0].key: no key (tolerates every taint) "
     "is not allowed on this cluster (podPolicy.allowedTolerationKeys: nvidia.com/gpu)"),
    ({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}, {},
     "spec.pod.tolerations[0].key: 'node-role.kubernetes.io/control-plane' is not allowed"),
])
def test_a_pod_setting_outside_the_charts_pod_policy_fails_naming_field_and_allowed_values(
    pod: dict[str, Any], storage: dict[str, Any], needle: str
) -> None:
    for kind, spec in (("TrainingRun", RUN), ("InferenceService", SERVE), ("Dataset", {"sources": [{"path": "a"}]})):
        res = resource(kind, {**spec, "pod": pod, "storage": storage})
        reason, message = failed(decide(res, Observed(dependencies={"Dataset/books": {"status": {
            "phase": "Succeeded"}}}), POLICY))
        assert reason == "PodPolicy" and needle in message, message


def test_the_pod_policy_allows_its_patterns_and_the_charts_own_values() -> None:
    fine = {"image": "ghcr.io/llmfab/trainer:dev", "runtimeClassName": "nvidia",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}
    assert pod_policy_problems(resource("TrainingRun", {**RUN, "pod": fine, "storage": {"claimName": "team-a-x"}}),
                               POLICY) == []
    own = {"image": POLICY.trainer_image}
    assert pod_policy_problems(resource("TrainingRun", {**RUN, "pod": own, "storage": {
        "claimName": POLICY.artifacts_claim}}), POLICY) == []
    # The default policy restricts nothing (the behaviour before podPolicy existed).
    anything = {"image": "evil.example/x:1", "runtimeClassName": "r", "priorityClassName": "p",
                "tolerations": [{"operator": "Exists"}]}
    assert pod_policy_problems(resource("TrainingRun", {**RUN, "pod": anything, "storage": {"claimName": "c"}}),
                               OperatorSettings()) == []


def test_the_pod_policy_comes_from_the_operators_environment_as_the_chart_writes_it() -> None:
    s = OperatorSettings.from_env({"LLMFAB_OPERATOR_ALLOWED_IMAGES": json.dumps(["reg/*"]),
                                   "LLMFAB_OPERATOR_ALLOWED_CLAIMS": "[]",
                                   "LLMFAB_OPERATOR_ARTIFACTS_ACCESS_MODE": "ReadWriteMany"})
    assert s.allowed_images == ["reg/*"] and s.allowed_claims == [] and s.allowed_runtime_classes == ["*"]
    assert s.artifacts_access_mode == "ReadWriteMany"
    with pytest.raises(ValueError, match="artifacts_access_mode"):
        OperatorSettings.from_env({"LLMFAB_OPERATOR_ARTIFACTS_ACCESS_MODE": "RWX"})


def test_the_spec_config_map_of_a_service_with_a_token_secret_holds_no_token() -> None:
    cm = build_spec_config_map(resource("InferenceService", {**SERVE, "feedback": TOKEN}))
    spec = yaml.safe_load(cm["data"]["spec.yaml"])["spec"]["feedback"]
    assert spec["tokenSecret"] == {"name": "fb-token", "key": "phone"}


def workload(kind: str, name: str, **status: Any) -> dict[str, Any]:
    api_version = {"Job": "batch/v1", "RayJob": "ray.io/v1", "Deployment": "apps/v1", "ConfigMap": "v1"}[kind]
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": "ml"}, "status": status}


def test_a_resource_refused_after_its_children_exist_has_its_running_workloads_deleted_and_an_event() -> None:
    svc = resource("InferenceService", {**SERVE, "feedback": {"enabled": True}})  # open: stored before the CEL
    deployment = workload("Deployment", "demo", readyReplicas=1)
    going = {**workload("Deployment", "demo"), "metadata": {"name": "demo", "deletionTimestamp": "2026-12-07T00:00:00Z"}}
    observed = Observed(status={"phase": "Running"}, deployment=deployment,
                        stale=[workload("ConfigMap", "demo-spec-old"), workload("Job", "demo-eval-old", active=1)])
    d = decide(svc, observed, SETTINGS)
    assert failed(d)[0] == "InsecureSpec"
    assert [(w["kind"], w["metadata"]["name"]) for w in d.delete] == [("Job", "demo-eval-old"), ("Deployment", "demo")]
    [stopped] = [e for e in d.events_if_deleted if e[1] == "Stopped"]
    assert stopped[0] == "Warning" and stopped[2].startswith("stopped Job/demo-eval-old, Deployment/demo (artifacts kept)")
    assert "spec.feedback.tokenSecret" in stopped[2]  # why, and the fix
    # Once they are gone (or going), nothing more is deleted and no event repeats.
    again = decide(svc, Observed(status=settle_failed(d), deployment=going), SETTINGS)
    assert again.delete == [] and again.events == again.events_if_deleted == [] and again.status == {}
    # A Job's running pods are stopped; a finished Job runs nothing and keeps its verdict.
    outside = resource("Dataset", {"sources": [{"path": "a"}], "pod": {"image": "evil.example/miner:1"}})
    jobs = {"data": workload("Job", "demo-data-r", active=1),
            "eval": workload("Job", "demo-eval-r", conditions=[{"type": "Complete", "status": "True"}])}
    d = decide(outside, Observed(jobs=jobs), POLICY)
    assert failed(d)[0] == "PodPolicy"
    assert [w["metadata"]["name"] for w in d.delete] == ["demo-data-r"]
    # Nothing to stop: no event beyond the Failed one (a resource refused before it had children).
    assert [e[1] for e in decide(outside, Observed(), POLICY).events] == ["PodPolicy"]


def settle_failed(d: Any) -> dict[str, Any]:
    return {k: v for k, v in d.status.items() if v is not None}
