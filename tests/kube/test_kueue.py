"""The Kueue stand-in (kueue.py) against what Kueue documents and does for a batch/v1 Job, on the
test API server with Kueue's own CRDs (third_party/kueue-v0.19.2), so every Workload it writes is
one Kueue's schema and CEL rules accept."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .apiserver import REPO, KubeAPIServer
from .kueue import KueueStandIn, condition, workload_name

QUEUED = {"kueue.x-k8s.io/queue-name": "user-queue"}


def job(name: str = "sample", *, suspend: bool = True, parallelism: int = 2, labels: dict[str, str] | None = None,
        ) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": {**QUEUED, **(labels or {})}},
            "spec": {"suspend": suspend, "parallelism": parallelism, "completions": parallelism,
                     "completionMode": "Indexed", "template": {"spec": {
                         "restartPolicy": "Never",
                         "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "1"}}}]}}}}


def pods(server: KubeAPIServer, name: str = "sample") -> list[dict[str, Any]]:
    return [p for p in server.items("pods", labels=f"job-name={name}") if not p["metadata"].get("deletionTimestamp")]


def reasons(wl: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in wl["status"]["conditions"]}


def test_the_workload_name_is_kueues_for_the_same_job() -> None:
    # The vector of Kueue's own unit test (jobframework/workload_names_test.go, ShortWorkloadNames off).
    assert workload_name({"metadata": {"name": "name", "uid": "uid"}}) == "job-name-ef3a1"


def test_a_queued_job_gets_one_pending_workload_as_kueue_makes_it(kube_apiserver: KubeAPIServer,
                                                                   kueue: KueueStandIn) -> None:
    kube_apiserver.create({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
                           "metadata": {"name": "training"}, "value": 100})
    created = kube_apiserver.create(job(labels={"kueue.x-k8s.io/priority-class": "training"}))
    [wl] = kube_apiserver.items("workloads")
    assert wl["metadata"]["name"] == workload_name(created)
    assert wl["metadata"]["labels"] == {"kueue.x-k8s.io/job-uid": created["metadata"]["uid"]}
    [owner] = wl["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Job", created["metadata"]["uid"], True)
    # One pod set of all the Job's pods: an Indexed Job is admitted whole (all or nothing).
    assert [(p["name"], p["count"]) for p in wl["spec"]["podSets"]] == [("main", 2)]
    assert wl["spec"]["queueName"] == "user-queue" and wl["spec"]["active"] is True
    assert wl["spec"]["priorityClassRef"]["name"] == "training" and wl["spec"]["priority"] == 100
    assert reasons(wl) == {"QuotaReserved": ("False", "Pending")}
    assert "insufficient unused quota" in condition(wl, "QuotaReserved")["message"]  # type: ignore[index]
    assert pods(kube_apiserver) == [] and kube_apiserver.read("jobs", "sample")["spec"]["suspend"] is True


def test_no_workload_while_its_priority_class_is_missing(kube_apiserver: KubeAPIServer, kueue: KueueStandIn) -> None:
    kube_apiserver.create(job(labels={"kueue.x-k8s.io/priority-class": "nowhere"}))
    assert kube_apiserver.items("workloads") == []


def test_admission_unsuspends_preemption_suspends_and_requeues(kube_apiserver: KubeAPIServer,
                                                               kueue: KueueStandIn) -> None:
    kube_apiserver.create(job())
    kueue.admit("sample", cluster_queue="gpus")
    assert kube_apiserver.read("jobs", "sample")["spec"]["suspend"] is False
    assert len(pods(kube_apiserver)) == 2  # the Job controller started the whole Job at once
    wl = kueue.workload("sample")
    assert wl is not None and reasons(wl) == {"QuotaReserved": ("True", "QuotaReserved"), "Admitted": ("True", "Admitted")}
    assert wl["status"]["admission"]["clusterQueue"] == "gpus"

    kueue.preempt("sample")
    wl = kueue.workload("sample")
    assert wl is not None
    # concepts/preemption: Evicted (reason Preempted) and Preempted (reason InClusterQueue).
    assert reasons(wl)["Evicted"] == ("True", "Preempted") and reasons(wl)["Preempted"] == ("True", "InClusterQueue")
    assert kube_apiserver.read("jobs", "sample")["spec"]["suspend"] is True
    assert pods(kube_apiserver) == []
    # Its pods gone, the quota goes back and the Workload is requeued.
    assert reasons(wl)["QuotaReserved"] == ("False", "Pending") and reasons(wl)["Requeued"] == ("True", "Preempted")
    assert reasons(wl)["Admitted"][0] == "False" and "admission" not in wl["status"]

    kueue.admit("sample")
    wl = kueue.workload("sample")
    assert wl is not None and reasons(wl)["Evicted"] == ("False", "QuotaReserved")
    assert condition(wl, "Evicted")["message"].startswith("Previously: Preempted to accommodate")  # type: ignore[index]
    assert kube_apiserver.read("jobs", "sample")["spec"]["suspend"] is False and len(pods(kube_apiserver)) == 2
    assert kueue.stopped_unadmitted == []


def test_a_job_unsuspended_without_admission_is_suspended_again(kube_apiserver: KubeAPIServer,
                                                                 kueue: KueueStandIn) -> None:
    kube_apiserver.create(job(suspend=False))  # Kueue's webhook would have created it suspended
    assert kube_apiserver.read("jobs", "sample")["spec"]["suspend"] is True
    assert pods(kube_apiserver) == [] and kueue.stopped_unadmitted == ["sample"]


def test_deactivating_an_admitted_workload_evicts_it_without_requeueing(kube_apiserver: KubeAPIServer,
                                                                        kueue: KueueStandIn) -> None:
    kube_apiserver.create(job())
    wl = kueue.admit("sample")
    rt = kube_apiserver.resource_type("workloads.kueue.x-k8s.io")
    with kube_apiserver.store.lock:
        current = kube_apiserver.store.get(rt, "default", wl["metadata"]["name"])
        kube_apiserver.store.update(rt, "default", wl["metadata"]["name"], {**current, "spec": {**current["spec"], "active": False}})
    wl = kueue.workload("sample")
    assert wl is not None and reasons(wl)["Evicted"] == ("True", "InactiveWorkload")
    assert reasons(wl)["Requeued"] == ("False", "InactiveWorkload")
    assert kube_apiserver.read("jobs", "sample")["spec"]["suspend"] is True and pods(kube_apiserver) == []
    with pytest.raises(AssertionError, match="no active Workload"):
        kueue.admit("sample")


def test_kueues_crds_refuse_a_workload_kueue_would_not_write(kube_apiserver: KubeAPIServer,
                                                             kueue: KueueStandIn) -> None:
    """The vendored schema and CEL rules are live: a condition without its required fields, and
    quota reserved without an assignment per pod set, are refused as by a cluster with Kueue."""
    from .statuses import APIError

    kube_apiserver.create(job())
    wl = kueue.workload("sample")
    assert wl is not None
    rt = kube_apiserver.resource_type("workloads.kueue.x-k8s.io")
    bad = {**wl, "status": {"conditions": [{"type": "QuotaReserved", "status": "True"}]}}
    with pytest.raises(APIError, match="reason"):
        kube_apiserver.store.update(rt, "default", wl["metadata"]["name"], bad, subresource="status")
    reserved = {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}
    bad = {**wl, "status": {"conditions": [reserved], "admission": {"clusterQueue": "q", "podSetAssignments": []}}}
    with pytest.raises(APIError, match="podSetAssignments must have the same number of podSets"):
        kube_apiserver.store.update(rt, "default", wl["metadata"]["name"], bad, subresource="status")


def test_the_documented_queues_apply_to_kueues_crds(kube_apiserver: KubeAPIServer, kueue: KueueStandIn,
                                                    kubectl: Any, tmp_path: Path) -> None:
    """docs/cluster.md's kueue-homelab.yaml, applied with the real kubectl: Kueue's schemas and CEL
    rules accept every object, and a Job labelled with its queue and priority gets its Workload."""
    text = (REPO / "docs" / "cluster.md").read_text()
    [block] = re.findall(r"^```yaml\n(# kueue-homelab\.yaml\n.*?)^```", text, flags=re.S | re.M)
    manifest = tmp_path / "kueue-homelab.yaml"
    manifest.write_text(block)
    kubectl("apply", "-f", str(manifest))
    kinds = {d["kind"] for d in yaml.safe_load_all(block)}
    assert kinds == {"ResourceFlavor", "ClusterQueue", "LocalQueue", "WorkloadPriorityClass"}
    [cq] = kube_apiserver.items("clusterqueues")
    quota = {r["name"]: r["nominalQuota"] for r in cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"]}
    assert 2 <= int(quota["nvidia.com/gpu"]) <= 4
    priorities = {w["metadata"]["name"]: w["value"] for w in kube_apiserver.items("workloadpriorityclasses")}
    assert priorities["serving"] > priorities["training"]
    [lq] = kube_apiserver.items("localqueues")
    kube_apiserver.create(job(labels={"kueue.x-k8s.io/queue-name": lq["metadata"]["name"],
                                      "kueue.x-k8s.io/priority-class": "training"}))
    wl = kueue.workload("sample")
    assert wl is not None and wl["spec"]["priority"] == priorities["training"]
