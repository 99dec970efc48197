"""The operator reconciling against the test API server: children, phases, conditions, events,
dependency waiting, restarts, suspend, generations, deletion, and the RBAC it needs.

Pods here are played by the test (``set_pod_phase``); tests/cluster/test_pods.py runs them for real.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import yaml

from llmfab.api import parse_resource
from llmfab.operator import rbac
from llmfab.operator.builders.common import revision
from llmfab.operator.kube import USER_AGENT
from tests.cluster.kubelet import wait_for
from tests.cluster.operator_runner import run_operator
from tests.kube.apiserver import KubeAPIServer

DATASET = {"apiVersion": "llmfab.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "books"},
           "spec": {"sources": [{"path": "corpus/*.txt"}], "tokenizer": {"type": "bpe", "vocabSize": 384}}}
RUN = {"apiVersion": "llmfab.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "tiny"},
       "spec": {"dataset": {"name": "books"}, "eval": {"enabled": False}, "release": {"license": "apache-2.0"},
                "model": {"layers": 2, "hidden": 64, "heads": 4, "contextLength": 32}}}
SERVICE = {"apiVersion": "llmfab.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "chat"},
           "spec": {"model": {"trainingRun": "tiny"}, "eval": {"enabled": False}}}


def rev(manifest: dict[str, Any]) -> str:
    return revision(parse_resource(copy.deepcopy(manifest)))


def status(server: KubeAPIServer, plural: str, name: str) -> dict[str, Any]:
    return dict(server.read(plural, name).get("status") or {})


def phase_is(server: KubeAPIServer, plural: str, name: str, phase: str) -> dict[str, Any] | None:
    s = status(server, plural, name)
    return s if s.get("phase") == phase else None


def jobs(server: KubeAPIServer, instance: str) -> list[dict[str, Any]]:
    return server.items("jobs", labels=f"app.kubernetes.io/instance={instance}")


def finish_job(server: KubeAPIServer, job: dict[str, Any], phase: str = "Succeeded", exit_code: int = 0) -> None:
    name = job["metadata"]["name"]
    pods = wait_for(lambda: server.items("pods", labels=f"job-name={name}"), 10, f"pods of {name}")
    for pod in pods:
        server.set_pod_phase(pod, phase, exit_code=exit_code)


def conditions(s: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in s.get("conditions") or []}


def test_a_dataset_becomes_a_job_and_its_phase_follows_the_job(kube_apiserver: KubeAPIServer, operator: Any) -> None:
    kube_apiserver.create(copy.deepcopy(DATASET))
    [job] = wait_for(lambda: jobs(kube_apiserver, "books"), 15, "the Dataset's Job")
    owner = kube_apiserver.read("datasets", "books")["metadata"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == owner["uid"]
    assert job["metadata"]["name"] == f"books-data-{rev(DATASET)}"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:5] == ["python", "-m", "llmfab", "data", "run"]
    spec_cm = kube_apiserver.read("configmaps", f"books-spec-{rev(DATASET)}")
    stored = yaml.safe_load(spec_cm["data"]["spec.yaml"])
    assert stored["metadata"]["uid"] == owner["uid"] and stored["spec"]["sources"][0]["path"] == "corpus/*.txt"
    # The emulated Job controller starts its pod at once: Pending (job created), then Running.
    s = wait_for(lambda: phase_is(kube_apiserver, "datasets", "books", "Running"), 10, "Running")
    assert s["stage"] == "data" and s["observedGeneration"] == 1 and s["startTime"]
    finish_job(kube_apiserver, job)
    s = wait_for(lambda: phase_is(kube_apiserver, "datasets", "books", "Succeeded"), 15, "Succeeded")
    assert conditions(s)["Ready"] == ("True", "Completed") and conditions(s)["Complete"][0] == "True"
    assert s["completionTime"] and s["stages"] == {"data": "Succeeded"}

    def reasons() -> list[str]:
        return [e["reason"] for e in kube_apiserver.items("events") if e["involvedObject"]["name"] == "books"]

    # kopf posts events from a queue after the status patch: they arrive shortly after the phase.
    wait_for(lambda: "Completed" in reasons(), 10, "the Completed event")
    assert "JobCreated" in reasons() and "Completed" in reasons()


def test_a_training_run_waits_for_its_dataset_then_runs(kube_apiserver: KubeAPIServer, operator: Any) -> None:
    kube_apiserver.create(copy.deepcopy(RUN))
    s = wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Waiting"), 15, "Waiting")
    assert conditions(s)["Ready"] == ("False", "WaitingForDependency")
    assert "Dataset/books does not exist" in s["message"]
    assert not jobs(kube_apiserver, "tiny")
    kube_apiserver.create(copy.deepcopy(DATASET))
    [ds_job] = wait_for(lambda: jobs(kube_apiserver, "books"), 15, "the Dataset's Job")
    finish_job(kube_apiserver, ds_job)
    [job] = wait_for(lambda: jobs(kube_apiserver, "tiny"), 20, "the TrainingRun's Job after the Dataset")
    assert job["metadata"]["name"] == f"tiny-train-{rev(RUN)}"
    finish_job(kube_apiserver, job, "Failed", exit_code=1)
    # The emulated Job controller retries up to backoffLimit; fail every pod it makes.
    def failed() -> dict[str, Any] | None:
        for pod in kube_apiserver.items("pods", labels=f"job-name=tiny-train-{rev(RUN)}"):
            if (pod.get("status") or {}).get("phase") in (None, "Pending", "Running"):
                kube_apiserver.set_pod_phase(pod, "Failed", exit_code=1)
        return phase_is(kube_apiserver, "trainingruns", "tiny", "Failed")
    s = wait_for(failed, 30, "Failed")
    assert conditions(s)["Failed"][0] == "True" and s["message"].startswith("train:")


def test_an_invalid_resource_is_refused_at_apply_naming_the_field(kubectl: Any, tmp_path: Any) -> None:
    bad = copy.deepcopy(RUN)
    bad["spec"]["model"].update(hidden=500, heads=8)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = kubectl("apply", "-f", str(path), check=False)
    assert out.returncode != 0
    assert "spec.model" in out.stderr and "heads" in out.stderr


def test_a_resource_the_server_let_through_but_llmfab_refuses_fails_with_the_field(
    kube_apiserver: KubeAPIServer, operator: Any
) -> None:
    """E.g. written before a CRD upgrade tightened a rule: the operator still names the field."""
    bad = copy.deepcopy(RUN)
    bad["spec"]["model"].update(hidden=500, heads=8)
    rt = kube_apiserver.resource_type("trainingruns")
    older = copy.deepcopy(rt.schema)  # the CRD as an older llmfab installed it: no CEL rule on model
    older["properties"]["spec"]["properties"]["model"].pop("x-kubernetes-validations")
    kube_apiserver.store.create(dataclasses.replace(rt, schema=older), "default", bad)
    s = wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Failed"), 15, "Failed")
    assert conditions(s)["Failed"] == ("True", "InvalidSpec")
    assert "spec.model.hidden: 500 is not divisible by spec.model.heads (8)" in s["message"]
    assert not jobs(kube_apiserver, "tiny")


def test_an_operator_restart_mid_reconcile_creates_no_duplicates(kube_apiserver: KubeAPIServer, kube: Any) -> None:
    with run_operator(kube):
        kube_apiserver.create(copy.deepcopy(DATASET))
        wait_for(lambda: jobs(kube_apiserver, "books"), 15, "the first Job")
    with run_operator(kube):
        kube_apiserver.create(copy.deepcopy(RUN))
        wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Waiting"), 15, "Waiting")
    assert [j["metadata"]["name"] for j in jobs(kube_apiserver, "books")] == [f"books-data-{rev(DATASET)}"]
    creates = [r for r in kube_apiserver.request_log if r.verb == "create" and r.resource == "jobs" and r.code == 201]
    assert len(creates) == 1


def test_suspend_deletes_the_pods_and_resume_recreates_them(kube_apiserver: KubeAPIServer, operator: Any,
                                                             kubectl: Any) -> None:
    kube_apiserver.create(copy.deepcopy(DATASET))
    [ds_job] = wait_for(lambda: jobs(kube_apiserver, "books"), 15, "the Dataset's Job")
    finish_job(kube_apiserver, ds_job)
    kube_apiserver.create(copy.deepcopy(RUN))
    wait_for(lambda: kube_apiserver.items("pods", labels=f"job-name=tiny-train-{rev(RUN)}"), 20, "training pods")
    kubectl("patch", "trainingrun", "tiny", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    s = wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Suspended"), 15, "Suspended")
    assert conditions(s)["Suspended"] == ("True", "Suspended")
    assert kube_apiserver.read("jobs", f"tiny-train-{rev(RUN)}")["spec"]["suspend"] is True
    wait_for(lambda: not kube_apiserver.items("pods", labels=f"job-name=tiny-train-{rev(RUN)}"), 10, "pods deleted")
    assert kube_apiserver.read("trainingruns", "tiny")["metadata"]["generation"] == 2
    kubectl("patch", "trainingrun", "tiny", "--type=merge", "-p", '{"spec": {"suspend": false}}')
    wait_for(lambda: kube_apiserver.read("jobs", f"tiny-train-{rev(RUN)}")["spec"]["suspend"] is False, 15, "resumed")
    wait_for(lambda: kube_apiserver.items("pods", labels=f"job-name=tiny-train-{rev(RUN)}"), 10, "pods again")


def test_a_spec_change_to_a_finished_dataset_starts_a_new_generation(
    kube_apiserver: KubeAPIServer, operator: Any, kubectl: Any
) -> None:
    kube_apiserver.create(copy.deepcopy(DATASET))
    [job] = wait_for(lambda: jobs(kube_apiserver, "books"), 15, "the Dataset's Job")
    finish_job(kube_apiserver, job)
    wait_for(lambda: phase_is(kube_apiserver, "datasets", "books", "Succeeded"), 15, "Succeeded")
    kubectl("patch", "dataset", "books", "--type=merge", "-p", '{"spec": {"tokenizer": {"vocabSize": 512}}}')
    changed = copy.deepcopy(DATASET)
    changed["spec"]["tokenizer"]["vocabSize"] = 512
    new = f"books-data-{rev(changed)}"
    wait_for(lambda: [j["metadata"]["name"] for j in jobs(kube_apiserver, "books")] == [new], 20,
             "only the new revision's Job")
    s = wait_for(lambda: (x := status(kube_apiserver, "datasets", "books")).get("observedGeneration") == 2 and x,
                 10, "observedGeneration 2")
    assert s["phase"] in ("Pending", "Running") and s["stage"] == "data"


def train_then_serve(server: KubeAPIServer) -> list[dict[str, Any]]:
    """Dataset and TrainingRun through their Jobs, then the InferenceService: its quantize Job."""
    server.create(copy.deepcopy(DATASET))
    finish_job(server, wait_for(lambda: jobs(server, "books"), 15, "Dataset Job")[0])
    server.create(copy.deepcopy(RUN))
    finish_job(server, wait_for(lambda: jobs(server, "tiny"), 20, "training Job")[0])
    server.create(copy.deepcopy(SERVICE))
    return list(wait_for(lambda: jobs(server, "chat"), 20, "quantize Job"))


def test_an_inference_service_serves_through_a_deployment_and_service(
    kube_apiserver: KubeAPIServer, operator: Any
) -> None:
    quantize = train_then_serve(kube_apiserver)
    assert [j["metadata"]["name"] for j in quantize] == [f"chat-quantize-{rev(SERVICE)}"]
    finish_job(kube_apiserver, quantize[0])
    deployment = wait_for(lambda: kube_apiserver.items("deployments"), 20, "the Deployment")[0]
    service = kube_apiserver.read("services", "chat")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    s = status(kube_apiserver, "inferenceservices", "chat")
    assert s["phase"] == "Running" and conditions(s)["Ready"][0] == "False"
    # The Deployment controller made its pod; its kubelet reports it ready.
    [pod] = wait_for(lambda: kube_apiserver.items("pods", labels="app.kubernetes.io/component=serve"), 10, "the pod")
    kube_apiserver.set_pod_phase(pod, "Running")
    s = wait_for(lambda: (x := status(kube_apiserver, "inferenceservices", "chat")).get("readyReplicas") == 1 and x,
                 15, "ready")
    assert s["url"] == "http://chat.default.svc:8000/v1"
    assert conditions(s)["Ready"] == ("True", "Serving")


def test_delete_collects_children_and_keeps_or_removes_artifacts(
    kube_apiserver: KubeAPIServer, operator: Any, kubectl: Any
) -> None:
    kube_apiserver.create(copy.deepcopy(DATASET))
    wait_for(lambda: jobs(kube_apiserver, "books"), 15, "the Dataset's Job")
    kubectl("delete", "dataset", "books", "--wait=true", "--timeout=30s")
    assert not jobs(kube_apiserver, "books") and not kube_apiserver.items("configmaps", labels="app.kubernetes.io/instance=books")
    doomed = copy.deepcopy(DATASET)
    doomed["spec"]["deletionPolicy"] = "Delete"
    kube_apiserver.create(doomed)
    wait_for(lambda: jobs(kube_apiserver, "books"), 15, "the Dataset's Job")
    kubectl("delete", "dataset", "books", "--wait=false")
    cleanup = wait_for(lambda: [j for j in jobs(kube_apiserver, "books") if j["metadata"]["name"] == "books-cleanup"],
                       15, "the clean-up Job")[0]
    assert cleanup["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python", "-m", "llmfab", "delete", "Dataset", "books"]
    assert "ownerReferences" not in cleanup["metadata"]
    assert kube_apiserver.items("datasets")  # held by the finalizer until the clean-up finished
    finish_job(kube_apiserver, cleanup)
    wait_for(lambda: not kube_apiserver.items("datasets"), 20, "the Dataset gone after its clean-up")


def test_delete_policy_waits_for_a_running_pod_across_an_operator_restart(
    kube_apiserver: KubeAPIServer, kube: Any, kubectl: Any
) -> None:
    """The clean-up starts only once the resource's last pod is gone, however often the operator
    restarts meanwhile, and exactly once (issue 19, item 7). The kubelet's part is played here."""
    doomed = copy.deepcopy(DATASET)
    doomed["spec"]["deletionPolicy"] = "Delete"
    name = f"books-data-{rev(DATASET)}"
    with run_operator(kube):
        uid = kube_apiserver.create(doomed)["metadata"]["uid"]
        [pod] = wait_for(lambda: kube_apiserver.items("pods", labels=f"job-name={name}"), 15, "the Dataset's pod")
        kube_apiserver.store.bind("default", pod["metadata"]["name"], "node-1")
        kube_apiserver.set_pod_phase(pod, "Running")
        kubectl("delete", "dataset", "books", "--wait=false")
        s = wait_for(lambda: (x := status(kube_apiserver, "datasets", "books")).get("message", "").startswith(
            "deleting: waiting for 1 pod(s) to stop") and x, 15, "the operator to wait for the pod")
        assert pod["metadata"]["name"] in s["message"]
        job = kube_apiserver.read("jobs", name)  # deleted in the foreground: held until its pod is gone
        assert job["metadata"]["deletionTimestamp"] and "foregroundDeletion" in job["metadata"]["finalizers"]
        assert kube_apiserver.read("pods", pod["metadata"]["name"])["metadata"]["deletionTimestamp"]
    with run_operator(kube):
        seen = len(kube_apiserver.request_log)

        def looked_again() -> bool:
            return sum(1 for r in kube_apiserver.request_log[seen:] if r.resource == "pods" and r.verb == "list") >= 2
        wait_for(looked_again, 15, "the restarted operator to look at the pods twice")
        assert not [j for j in jobs(kube_apiserver, "books") if j["metadata"]["name"] == "books-cleanup"]
        kube_apiserver.set_pod_phase(pod, "Failed", exit_code=143)  # SIGTERM ended it; its kubelet removes it
        kube_apiserver.store.delete(kube_apiserver.resource_type("pods"), "default", pod["metadata"]["name"],
                                    grace_period=0)
        cleanup = wait_for(lambda: [j for j in jobs(kube_apiserver, "books") if j["metadata"]["name"] == "books-cleanup"],
                           15, "the clean-up Job")[0]
        assert cleanup["metadata"]["annotations"]["llmfab.dev/owner-uid"] == uid
        finish_job(kube_apiserver, cleanup)
        wait_for(lambda: not kube_apiserver.items("datasets"), 20, "the Dataset gone after its clean-up")
    creates = [r for r in kube_apiserver.request_log if r.verb == "create" and r.resource == "jobs" and r.code == 201]
    assert len(creates) == 2  # the data Job and one clean-up Job


def test_every_call_the_operator_made_is_allowed_by_its_rbac_rules(
    kube_apiserver: KubeAPIServer, operator: Any
) -> None:
    """Every request kopf and the reconciler sent, checked against the ClusterRole the chart grants."""
    finish_job(kube_apiserver, train_then_serve(kube_apiserver)[0])
    wait_for(lambda: kube_apiserver.items("deployments"), 20, "the Deployment")
    kube_apiserver.store.delete(kube_apiserver.resource_type("trainingruns"), "default", "tiny")
    wait_for(lambda: not kube_apiserver.items("trainingruns"), 20, "deleted")
    operator_calls = [r for r in kube_apiserver.request_log
                      if r.user_agent.startswith(("kopf/", USER_AGENT)) and r.resource]
    assert {r.user_agent.split("/")[0] for r in operator_calls} == {"kopf", "llmfab-operator"}
    calls = {rbac_call(r) for r in operator_calls}
    assert {c for c in calls if not rbac.allows(rbac.operator_rules(), *c)} == set()


def rbac_call(r: Any) -> tuple[str, str, str]:
    """(API group, resource[/subresource], verb) of a logged request, as RBAC sees it."""
    return r.api_group or "", f"{r.resource}/{r.subresource}" if r.subresource else str(r.resource), r.verb
