"""Issue 19 against the test API server (tests/kube) with the operator running: the CRD refuses an
open feedback app at ``kubectl apply``; the operator fails one stored before the CRD did, and
stops the Deployment or Jobs of a resource refused after they exist (until the spec is fixed); a
feedback service gets its token from a Secret the operator never reads and is recreated, not
rolled; the chart's pod policy refuses a resource and its clean-up Job."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import yaml

from llmfab.operator import rbac
from llmfab.operator.kube import USER_AGENT
from tests.cluster.kubelet import wait_for
from tests.cluster.operator_runner import FAST, run_operator
from tests.cluster.test_operator import DATASET, conditions, jobs, phase_is, rbac_call
from tests.kube.apiserver import KubeAPIServer

SERVICE = {"apiVersion": "llmfab.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "chat"},
           "spec": {"model": {"path": "/artifacts/models/m"}, "release": {"license": "apache-2.0"},
                    "quantization": {"method": "none"},
                    "eval": {"enabled": False}}}


def with_feedback(feedback: dict[str, Any]) -> dict[str, Any]:
    svc = copy.deepcopy(SERVICE)
    svc["spec"]["feedback"] = feedback
    return svc


def test_kubectl_apply_refuses_an_open_feedback_app_naming_token_secret(kubectl: Any, tmp_path: Any) -> None:
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(with_feedback({"enabled": True})))
    out = kubectl("apply", "-f", str(path), check=False)
    assert out.returncode != 0
    assert "spec.feedback.tokenSecret" in out.stderr and "allowAnonymous" in out.stderr


def test_an_open_feedback_app_stored_before_the_crd_refused_it_fails_and_gets_no_deployment(
    kube_apiserver: KubeAPIServer, operator: Any
) -> None:
    rt = kube_apiserver.resource_type("inferenceservices")
    older = copy.deepcopy(rt.schema)  # the CRD as an older llmfab installed it: no cluster-only rules
    older["properties"]["spec"].pop("x-kubernetes-validations")
    kube_apiserver.store.create(dataclasses.replace(rt, schema=older), "default", with_feedback({"enabled": True}))
    s = wait_for(lambda: phase_is(kube_apiserver, "inferenceservices", "chat", "Failed"), 15, "Failed")
    assert conditions(s)["Failed"] == ("True", "InsecureSpec")
    assert s["message"].startswith("spec.feedback.tokenSecret: a feedback app without a token")
    assert not kube_apiserver.items("deployments")


def test_a_service_refused_after_its_deployment_exists_loses_the_deployment_and_gets_it_back_when_fixed(
    kube_apiserver: KubeAPIServer, operator: Any, kubectl: Any
) -> None:
    kube_apiserver.create(with_feedback({"enabled": True, "allowAnonymous": True}))
    wait_for(lambda: kube_apiserver.items("deployments"), 20, "the Deployment")
    # An upgrade of the operator (or an edit past an older CRD) now finds an open feedback app.
    rt = kube_apiserver.resource_type("inferenceservices")
    older = copy.deepcopy(rt.schema)
    older["properties"]["spec"].pop("x-kubernetes-validations")
    stored = kube_apiserver.read("inferenceservices", "chat")
    del stored["spec"]["feedback"]["allowAnonymous"]
    kube_apiserver.store.update(dataclasses.replace(rt, schema=older), "default", "chat", stored)
    s = wait_for(lambda: phase_is(kube_apiserver, "inferenceservices", "chat", "Failed"), 15, "Failed")
    assert conditions(s)["Failed"] == ("True", "InsecureSpec")
    assert "spec.feedback.tokenSecret" in s["message"]  # the fix
    wait_for(lambda: not kube_apiserver.items("deployments"), 15, "the Deployment deleted")

    def stopped() -> list[str]:
        return [e["message"] for e in kube_apiserver.items("events")
                if e["involvedObject"]["name"] == "chat" and e["reason"] == "Stopped"]

    [message] = wait_for(stopped, 10, "the Stopped event")
    assert message.startswith("stopped Deployment/chat (artifacts kept)") and "spec.feedback.tokenSecret" in message
    assert [e["type"] for e in kube_apiserver.items("events") if e["reason"] == "Stopped"] == ["Warning"]
    assert not kube_apiserver.items("deployments")  # the timer's later passes do not bring it back

    patch = {"spec": {"feedback": {"allowAnonymous": True}}}
    kubectl("patch", "inferenceservice", "chat", "--type=merge", "-p", yaml.safe_dump(patch))
    wait_for(lambda: kube_apiserver.items("deployments"), 20, "the Deployment back")
    wait_for(lambda: phase_is(kube_apiserver, "inferenceservices", "chat", "Running"), 15, "Running")
    assert len(stopped()) == 1
    assert_operator_calls_allowed(kube_apiserver)


def test_a_dataset_refused_by_a_tightened_pod_policy_loses_its_running_job_and_gets_it_back_when_fixed(
    kube_apiserver: KubeAPIServer, kube: Any, kubectl: Any
) -> None:
    dataset = copy.deepcopy(DATASET)
    dataset["spec"]["pod"] = {"image": "other.example/data:1"}
    with run_operator(kube) as runner:  # the default policy allows every image
        kube_apiserver.create(dataset)
        wait_for(lambda: jobs(kube_apiserver, "books"), 15, "the data Job")
    assert runner.exception is None, runner.output
    policy = FAST.model_copy(update={"allowed_images": ["ghcr.io/llmfab/*"]})  # helm upgrade: podPolicy tightened
    with run_operator(kube, policy) as runner:
        s = wait_for(lambda: phase_is(kube_apiserver, "datasets", "books", "Failed"), 15, "Failed")
        assert conditions(s)["Failed"] == ("True", "PodPolicy")
        wait_for(lambda: not jobs(kube_apiserver, "books"), 15, "the Job deleted")
        events = wait_for(lambda: [e for e in kube_apiserver.items("events")
                                   if e["involvedObject"]["name"] == "books" and e["reason"] == "Stopped"],
                          10, "the Stopped event")
        assert events[0]["type"] == "Warning" and events[0]["message"].startswith("stopped Job/books-data-")
        assert "spec.pod.image: 'other.example/data:1' is not allowed" in events[0]["message"]
        kubectl("patch", "dataset", "books", "--type=json", "-p", '[{"op": "remove", "path": "/spec/pod/image"}]')
        wait_for(lambda: jobs(kube_apiserver, "books"), 15, "the data Job back")
    assert runner.exception is None and "Traceback" not in runner.output, runner.output
    assert_operator_calls_allowed(kube_apiserver)


def assert_operator_calls_allowed(server: KubeAPIServer) -> None:
    """The deletes a refusal makes are granted by the ClusterRole the chart gives the operator."""
    calls = {rbac_call(r) for r in server.request_log if r.user_agent.startswith(("kopf/", USER_AGENT)) and r.resource}
    assert ("apps", "deployments", "delete") in calls or ("batch", "jobs", "delete") in calls
    assert {c for c in calls if not rbac.allows(rbac.operator_rules(), *c)} == set()


def test_feedback_gets_its_token_from_a_secret_the_operator_never_reads_and_is_recreated_not_rolled(
    kube_apiserver: KubeAPIServer, operator: Any, kubectl: Any
) -> None:
    kube_apiserver.create(copy.deepcopy(SERVICE))
    dep = wait_for(lambda: kube_apiserver.items("deployments"), 20, "the Deployment")[0]
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    patch = {"spec": {"feedback": {"enabled": True, "tokenSecret": {"name": "fb-token", "key": "token"}}}}
    kubectl("patch", "inferenceservice", "chat", "--type=merge", "-p", yaml.safe_dump(patch))

    def recreated() -> dict[str, Any] | None:
        d = kube_apiserver.read("deployments", "chat")
        return d if d["spec"]["strategy"]["type"] == "Recreate" else None

    dep = wait_for(recreated, 20, "the Deployment switched to Recreate")
    assert "rollingUpdate" not in dep["spec"]["strategy"]  # the API server refuses both at once
    [container] = dep["spec"]["template"]["spec"]["containers"]
    token = [e for e in container["env"] if e["name"] == "LLMFAB_FEEDBACK_TOKEN"]
    assert token == [{"name": "LLMFAB_FEEDBACK_TOKEN",
                      "valueFrom": {"secretKeyRef": {"name": "fb-token", "key": "token"}}}]
    s = wait_for(lambda: (x := kube_apiserver.read("inferenceservices", "chat")["status"]).get("feedbackUrl") and x,
                 15, "the feedback URL")
    assert s["phase"] == "Running"
    operator_calls = [r for r in kube_apiserver.request_log if r.user_agent.startswith(("kopf/", USER_AGENT))]
    assert not [r for r in operator_calls if r.resource == "secrets"]


def test_the_charts_pod_policy_fails_a_resource_and_keeps_its_clean_up_job_from_running(
    kube_apiserver: KubeAPIServer, kube: Any, kubectl: Any
) -> None:
    policy = FAST.model_copy(update={"allowed_claims": ["team-a-*"], "allowed_images": ["ghcr.io/llmfab/*"]})
    intruder = copy.deepcopy(DATASET)
    intruder["spec"].update(storage={"claimName": "team-b-models"}, deletionPolicy="Delete",
                            pod={"image": "evil.example/wipe:1"})
    with run_operator(kube, policy) as runner:
        kube_apiserver.create(intruder)
        s = wait_for(lambda: phase_is(kube_apiserver, "datasets", "books", "Failed"), 15, "Failed")
        assert conditions(s)["Failed"] == ("True", "PodPolicy")
        assert "spec.pod.image: 'evil.example/wipe:1' is not allowed on this cluster" in s["message"]
        assert "spec.storage.claimName: 'team-b-models' is not allowed" in s["message"]
        assert not jobs(kube_apiserver, "books")
        kubectl("delete", "dataset", "books", "--wait=true", "--timeout=30s")
        assert not jobs(kube_apiserver, "books")  # no clean-up Job mounted team-b's claim
        created = [r for r in kube_apiserver.request_log if r.verb == "create" and r.resource == "jobs"]
        assert created == []
    assert runner.exception is None and "Traceback" not in runner.output, runner.output
