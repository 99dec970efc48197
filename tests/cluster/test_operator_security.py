"""Issue 19 against the test API server (tests/kube) with the operator running: the CRD refuses an
open feedback app at ``kubectl apply``; the operator fails one stored before the CRD did; a
feedback service gets its token from a Secret the operator never reads and is recreated, not
rolled; the chart's pod policy refuses a resource and its clean-up Job."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import yaml

from llmfab.operator.kube import USER_AGENT
from tests.cluster.kubelet import wait_for
from tests.cluster.operator_runner import FAST, run_operator
from tests.cluster.test_operator import DATASET, conditions, jobs, phase_is
from tests.kube.apiserver import KubeAPIServer

SERVICE = {"apiVersion": "llmfab.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "chat"},
           "spec": {"model": {"path": "/artifacts/models/m"}, "quantization": {"method": "none"},
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
