"""The operator with Kueue on the test API server (tests/kube/kueue.py plays Kueue; the test is its
scheduler): queued Jobs wait suspended, run when admitted, are preempted and re-admitted, and the
operator never fights Kueue for ``spec.suspend``. Pods are played by the test here; the slow tests
at the end run them for real (tests/cluster/kubelet.py) and check what a preemption costs a run."""

from __future__ import annotations

import copy
from typing import Any

from llmfab.operator import rbac
from tests.cluster.kubelet import wait_for
from tests.cluster.test_operator import (
    DATASET,
    RUN,
    conditions,
    finish_job,
    jobs,
    phase_is,
    rbac_call,
    rev,
    status,
)
from tests.kube.apiserver import KubeAPIServer
from tests.kube.kueue import KueueStandIn

QUEUED = {"queueName": "user-queue", "priorityClassName": "training"}
TRAINING_PRIORITY = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
                     "metadata": {"name": "training"}, "value": 100, "description": "training: yields to serving"}


def queued(manifest: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(manifest)
    out["spec"]["scheduling"] = dict(QUEUED)
    return out


def events(server: KubeAPIServer, name: str) -> list[str]:
    """The reasons of ``name``'s events in the order they were stored."""
    mine = [e for e in server.items("events") if e["involvedObject"]["name"] == name]
    return [e["reason"] for e in sorted(mine, key=lambda e: int(e["metadata"]["resourceVersion"]))]


def pods(server: KubeAPIServer, job: str) -> list[dict[str, Any]]:
    return [p for p in server.items("pods", labels=f"job-name={job}") if not p["metadata"].get("deletionTimestamp")]


def operator_calls(server: KubeAPIServer) -> list[Any]:
    return [r for r in server.request_log if r.user_agent.startswith(("kopf/", "llmfab-operator/")) and r.resource]


def run_dataset_through_kueue(server: KubeAPIServer, kueue: KueueStandIn) -> None:
    server.create(queued(DATASET))
    [job] = wait_for(lambda: jobs(server, "books"), 15, "the Dataset's Job")
    s = wait_for(lambda: phase_is(server, "datasets", "books", "Queued"), 15, "Queued")
    assert job["spec"]["suspend"] is True and pods(server, job["metadata"]["name"]) == []
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "user-queue"
    # Once Kueue made its Workload, the message says why it waits, in Kueue's words.
    wait_for(lambda: "insufficient unused quota" in status(server, "datasets", "books")["message"], 15,
             "Kueue's reason in the message")
    assert conditions(s)["Progressing"] == ("True", "Queued")
    kueue.admit(job["metadata"]["name"])
    finish_job(server, job)
    wait_for(lambda: phase_is(server, "datasets", "books", "Succeeded"), 15, "the Dataset to succeed")


def test_a_queued_run_waits_runs_when_admitted_and_survives_a_preemption_without_a_fight(
    kube_apiserver: KubeAPIServer, kueue: KueueStandIn, operator: Any
) -> None:
    kube_apiserver.create(TRAINING_PRIORITY)
    run_dataset_through_kueue(kube_apiserver, kueue)
    kube_apiserver.create(queued(RUN))
    name = f"tiny-train-{rev(RUN)}"
    wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Queued"), 15, "Queued")
    workload = wait_for(lambda: kueue.workload(name), 10, "its Workload")
    assert workload["spec"]["priority"] == 100 and workload["spec"]["podSets"][0]["count"] == 1

    kueue.admit(name)
    [pod] = wait_for(lambda: pods(kube_apiserver, name), 10, "the training pod")
    kube_apiserver.set_pod_phase(pod, "Running")
    wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Running"), 15, "Running")

    kueue.preempt(name)
    s = wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Preempted"), 15, "Preempted")
    assert conditions(s)["Suspended"] == ("True", "Preempted") and "checkpoints kept" in s["message"]
    assert pods(kube_apiserver, name) == []
    # Kueue owns the Job's suspend: through a few of the operator's resyncs it stays as Kueue set it.
    wait_for(lambda: len([r for r in operator_calls(kube_apiserver) if r.resource == "workloads"]) >= 6, 15,
             "three more looks at the Workload")
    assert kube_apiserver.read("jobs", name)["spec"]["suspend"] is True and kueue.stopped_unadmitted == []

    kueue.admit(name)
    [pod] = wait_for(lambda: pods(kube_apiserver, name), 10, "the training pod again")
    kube_apiserver.set_pod_phase(pod, "Running")
    wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Running"), 15, "Running again")
    finish_job(kube_apiserver, kube_apiserver.read("jobs", name))
    wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Succeeded"), 15, "Succeeded")

    def transitions() -> list[str]:
        return [r for r in events(kube_apiserver, "tiny") if r in ("Queued", "Running", "Preempted", "Completed")]

    wait_for(lambda: "Completed" in transitions(), 10, "the Completed event")
    assert transitions() == ["Queued", "Running", "Preempted", "Running", "Completed"], transitions()
    assert kueue.stopped_unadmitted == []
    calls = {rbac_call(r) for r in operator_calls(kube_apiserver)}
    assert ("batch", "jobs", "patch") not in calls  # never a suspend (nor anything else) on a queued Job
    assert ("kueue.x-k8s.io", "workloads", "list") in calls
    assert {c for c in calls if not rbac.allows(rbac.operator_rules(), *c)} == set()


def test_spec_suspend_of_a_queued_run_deactivates_its_workload_and_resume_requeues_it(
    kube_apiserver: KubeAPIServer, kueue: KueueStandIn, operator: Any, kubectl: Any
) -> None:
    kube_apiserver.create(TRAINING_PRIORITY)
    run_dataset_through_kueue(kube_apiserver, kueue)
    kube_apiserver.create(queued(RUN))
    name = f"tiny-train-{rev(RUN)}"
    wait_for(lambda: kueue.workload(name), 15, "its Workload")
    kueue.admit(name)
    wait_for(lambda: pods(kube_apiserver, name), 10, "the training pod")

    kubectl("patch", "trainingrun", "tiny", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    s = wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Suspended"), 15, "Suspended")
    assert conditions(s)["Suspended"] == ("True", "Suspended")
    wl = wait_for(lambda: (w := kueue.workload(name)) and w["spec"]["active"] is False and w, 15, "a deactivated Workload")
    assert {c["type"]: c["reason"] for c in wl["status"]["conditions"]}["Evicted"] == "InactiveWorkload"
    assert kube_apiserver.read("jobs", name)["spec"]["suspend"] is True and pods(kube_apiserver, name) == []

    kubectl("patch", "trainingrun", "tiny", "--type=merge", "-p", '{"spec": {"suspend": false}}')
    wait_for(lambda: kueue.workload(name)["spec"]["active"] is True, 15, "the Workload active again")  # type: ignore[index]
    wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Queued"), 15, "Queued again")
    kueue.admit(name)
    wait_for(lambda: pods(kube_apiserver, name), 10, "the training pod again")
    assert kueue.stopped_unadmitted == []
    calls = {rbac_call(r) for r in operator_calls(kube_apiserver)}
    assert ("kueue.x-k8s.io", "workloads", "patch") in calls and ("batch", "jobs", "patch") not in calls
    assert {c for c in calls if not rbac.allows(rbac.operator_rules(), *c)} == set()
