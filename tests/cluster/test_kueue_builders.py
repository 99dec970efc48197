"""Kueue on plain dicts: what a queued resource's Jobs and Deployment carry (builders/kueue.py), and
the reconcile decisions about a Job Kueue owns (queueing.py): Queued, admitted, Preempted,
Suspended, who may touch ``spec.suspend``. Against the API server: test_kueue.py."""

from __future__ import annotations

from typing import Any

from llmfab.api.common import Phase
from llmfab.operator.builders.autoscaling import KedaApis
from llmfab.operator.builders.inference import build_deployment
from llmfab.operator.builders.jobs import EXIT_SIGTERM, build_stage_job
from llmfab.operator.builders.kueue import PRIORITY_LABEL, QUEUE_LABEL, SUSPENDED_BY, keep_queue_of
from llmfab.operator.reconcile import Observed, decide
from llmfab.operator.serving import Seen, plan_serving
from tests.cluster.test_builders import MULTI, RUN, SETTINGS, assert_valid, resource
from tests.cluster.test_reconcile import job, settle

QUEUED = {"scheduling": {"queueName": "gpus", "priorityClassName": "training"}}
WL = "kueue.x-k8s.io/v1beta2"


def queued_run(**spec: Any) -> Any:
    return resource("TrainingRun", {**RUN, **QUEUED, **spec})


def kueue_job(stage: str = "train", **kw: Any) -> dict[str, Any]:
    j = job(stage, **kw)
    j["metadata"]["labels"] |= {QUEUE_LABEL: "gpus", PRIORITY_LABEL: "training"}
    j["metadata"]["uid"] = f"uid-{stage}"
    return j


def workload(*conditions: tuple[str, str, str, str], active: bool = True, ours: bool = False,
             cluster_queue: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": t, "status": s, "reason": r, "message": m}
                                             for t, s, r, m in conditions]}
    if cluster_queue:
        status["admission"] = {"clusterQueue": cluster_queue}
    return {"apiVersion": WL, "kind": "Workload",
            "metadata": {"name": "job-demo-train-1a2b3", "namespace": "ml",
                         "annotations": {SUSPENDED_BY: "spec.suspend"} if ours else {}},
            "spec": {"active": active, "queueName": "gpus"}, "status": status}


PENDING = ("QuotaReserved", "False", "Pending", "couldn't assign flavors to pod set main: insufficient quota")
ADMITTED = (("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue gpu-cq"),
            ("Admitted", "True", "Admitted", "The workload is admitted"))
PREEMPTED = (("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: x) due to prioritization"),
             ("QuotaReserved", "False", "Pending", "Preempted"), ("Requeued", "True", "Preempted", "Preempted"))


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def job_patches(d: Any) -> list[dict[str, Any]]:
    return [p for p in d.patch if p["kind"] == "Job"]


# --- builders --------------------------------------------------------------------------------------


def test_a_queued_multi_node_run_is_one_suspended_indexed_job_labelled_for_kueue() -> None:
    run = resource("TrainingRun", {**MULTI, **QUEUED})
    built = build_stage_job(run, "train", SETTINGS)
    assert_valid(built)
    labels = built["metadata"]["labels"]
    assert labels[QUEUE_LABEL] == "gpus" and labels[PRIORITY_LABEL] == "training"
    spec = built["spec"]
    # Created suspended: Kueue admits the whole Job (one Workload, one pod set of 3 pods) or nothing.
    assert spec["suspend"] is True and spec["parallelism"] == spec["completions"] == 3
    [container] = spec["template"]["spec"]["containers"]
    # Kueue accounts quota by requests: every container requests CPU, memory and its GPUs.
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "2"}
    assert QUEUE_LABEL not in spec["template"]["metadata"]["labels"]  # Kueue reads the Job's labels


def test_the_users_requests_and_limits_stand_and_only_what_neither_names_is_defaulted() -> None:
    run = queued_run(pod={"resources": {"requests": {"cpu": "6"}, "limits": {"memory": "24Gi", "nvidia.com/gpu": "0"}}})
    resources = build_stage_job(run, "train", SETTINGS)["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "6"}, "limits": {"memory": "24Gi"}}  # Kueue reads the limit as request
    unqueued = build_stage_job(resource("TrainingRun", {**RUN, "pod": {"resources": {"limits": {"nvidia.com/gpu": "0"}}}}),
                               "train", SETTINGS)
    assert unqueued["spec"]["suspend"] is False and QUEUE_LABEL not in unqueued["metadata"]["labels"]
    assert unqueued["spec"]["template"]["spec"]["containers"][0]["resources"] == {}


def test_a_pod_stopped_by_sigterm_does_not_spend_a_retry() -> None:
    """The Job controller counts a pod it deleted for a suspension as failed; a workload that got
    SIGTERM exits 143, and that is ignored like a disruption."""
    rules = build_stage_job(queued_run(), "train", SETTINGS)["spec"]["podFailurePolicy"]["rules"]
    assert EXIT_SIGTERM == 143
    assert {"action": "Ignore", "onExitCodes": {"containerName": "workload", "operator": "In", "values": [143]}} in rules


def test_a_queued_service_labels_its_deployment_and_keeps_the_queue_it_was_created_with() -> None:
    svc = resource("InferenceService", {"model": {"path": "/m"}, **QUEUED})
    dep = build_deployment(svc, SETTINGS, use_service_monitor=False)
    assert dep["metadata"]["labels"][QUEUE_LABEL] == "gpus" and dep["metadata"]["labels"][PRIORITY_LABEL] == "training"
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] == "2Gi"
    existing = {"metadata": {"labels": {QUEUE_LABEL: "old"}}}
    kept = keep_queue_of(dep, existing)["metadata"]["labels"]
    assert kept[QUEUE_LABEL] == "old" and PRIORITY_LABEL not in kept


def test_server_pods_held_by_kueue_make_the_service_queued() -> None:
    svc = resource("InferenceService", {"model": {"path": "/m"}, **QUEUED})
    gated = {"metadata": {"name": "demo-x"}, "spec": {"schedulingGates": [{"name": "kueue.x-k8s.io/admission"}]}}
    s = plan_serving(svc, SETTINGS, Seen({"status": {"replicas": 1}}, None, KedaApis(), (), (gated,)))
    assert (s.phase, s.reason) == (Phase.QUEUED, "Queued") and "LocalQueue gpus" in s.message


def test_a_queued_ray_dataset_is_refused_kueue_cannot_queue_it() -> None:
    spec = {"sources": [{"path": "a.txt"}], "engine": {"type": "ray", "ray": {"cluster": "rc"}}, **QUEUED}
    d = decide(resource("Dataset", spec), Observed(), SETTINGS)
    assert d.apply == [] and d.status["phase"] == "Failed"
    assert conditions(d.status)["Failed"] == ("True", "Unqueueable")
    assert d.status["message"].startswith("spec.scheduling.queueName: Kueue cannot queue a RayJob")


# --- decisions -------------------------------------------------------------------------------------


def test_a_queued_run_creates_its_job_and_is_queued_naming_the_queue() -> None:
    d = decide(queued_run(), Observed(dependencies={"Dataset/books": {"status": {"phase": "Succeeded"}}}), SETTINGS)
    assert [m["kind"] for m in d.apply] == ["ConfigMap", "Job"] and d.apply[1]["spec"]["suspend"] is True
    assert (d.status["phase"], d.status["stages"]) == ("Queued", {"train": "Queued"})
    assert "queued in Kueue LocalQueue gpus" in d.status["message"] and [e[1] for e in d.events] == ["Queued"]
    assert conditions(d.status)["Progressing"] == ("True", "Queued")
    # Kueue made its Workload: the message says why it waits, in Kueue's words; no second event.
    d2 = decide(queued_run(), Observed(status=settle({}, d), jobs={"train": kueue_job(suspend=True)},
                                       workloads={"train": workload(PENDING)}, workloads_readable=True), SETTINGS)
    assert job_patches(d2) == [] and d2.events == []
    assert d2.status["message"].endswith("insufficient quota") and "LocalQueue gpus" in d2.status["message"]


def test_the_operator_never_touches_the_suspend_of_a_job_kueue_owns() -> None:
    for suspended, active in ((True, 0), (False, 1)):
        d = decide(queued_run(), Observed(status={"phase": "Running"}, jobs={"train": kueue_job(suspend=suspended, active=active)},
                                          workloads={"train": workload(PENDING)}), SETTINGS)
        assert job_patches(d) == []
    # A Job without the queue label (made before the resource had a queue) stays the operator's.
    d = decide(resource("TrainingRun", RUN), Observed(jobs={"train": job("train", suspend=True)}), SETTINGS)
    assert job_patches(d)[0]["spec"] == {"suspend": False}


def test_admitted_running_preempted_then_running_again_with_an_event_each() -> None:
    run, jobs = queued_run(), {"train": kueue_job(suspend=True)}
    status = {"phase": "Queued", "stage": "train", "observedGeneration": 3, "stages": {"train": "Queued"},
              "conditions": [{"reason": "Queued"}]}
    d = decide(run, Observed(status=status, jobs=jobs, workloads={"train": workload(*ADMITTED, cluster_queue="gpu-cq")}),
               SETTINGS)
    assert (d.status["phase"], [e[1] for e in d.events]) == ("Pending", ["Admitted"])
    assert "admitted by Kueue ClusterQueue gpu-cq" in d.status["message"]
    status = settle(status, d)
    d = decide(run, Observed(status=status, jobs={"train": kueue_job(active=1)}), SETTINGS)
    assert d.status["phase"] == "Running" and [e[1] for e in d.events] == ["Running"]
    status = settle(status, d)

    d = decide(run, Observed(status=status, jobs={"train": kueue_job(suspend=True)}, workloads={"train": workload(*PREEMPTED)}),
               SETTINGS)
    assert (d.status["phase"], d.status["stages"]) == ("Preempted", {"train": "Preempted"})
    assert d.events == [("Normal", "Preempted", d.status["message"])]
    assert "evicted by Kueue (Preempted to accommodate" in d.status["message"] and "checkpoints kept" in d.status["message"]
    assert conditions(d.status)["Suspended"] == ("True", "Preempted") and conditions(d.status)["Progressing"][0] == "False"
    assert job_patches(d) == []
    status = settle(status, d)
    # The stopped pod reports Failed/Terminated afterwards: the phase is put back, no second event.
    stopped = {**status, "phase": "Failed", "conditions": [{"type": "Ready", "reason": "Terminated"}]}
    d = decide(run, Observed(status=stopped, jobs={"train": kueue_job(suspend=True)}, workloads={"train": workload(*PREEMPTED)}),
               SETTINGS)
    assert d.status["phase"] == "Preempted" and d.events == []
    d = decide(run, Observed(status=status, jobs={"train": kueue_job(active=1)}), SETTINGS)
    assert d.status["phase"] == "Running" and [e[1] for e in d.events] == ["Running"]


def test_spec_suspend_deactivates_the_workload_and_resume_activates_only_what_it_deactivated() -> None:
    admitted = workload(*ADMITTED)
    d = decide(queued_run(suspend=True), Observed(status={"phase": "Running"}, jobs={"train": kueue_job(active=1)},
                                                  workloads={"train": admitted}), SETTINGS)
    assert job_patches(d) == []
    [patch] = d.patch
    assert patch == {"apiVersion": WL, "kind": "Workload", "spec": {"active": False},
                     "metadata": {"name": "job-demo-train-1a2b3", "namespace": "ml",
                                  "annotations": {SUSPENDED_BY: "spec.suspend"}}}
    assert d.status["phase"] == "Suspended" and "deactivated (spec.active: false)" in d.status["message"]
    evicted = workload(("Evicted", "True", "InactiveWorkload", "The workload is deactivated"), active=False, ours=True)
    d = decide(queued_run(), Observed(status=settle({}, d), jobs={"train": kueue_job(suspend=True)},
                                      workloads={"train": evicted}), SETTINGS)
    assert [p["spec"] for p in d.patch] == [{"active": True}] and d.patch[0]["metadata"]["annotations"] == {SUSPENDED_BY: None}
    assert d.status["phase"] == "Queued"  # requeued: waits for Kueue again, not "preempted"
    by_admin = workload(("Evicted", "True", "InactiveWorkload", "The workload is deactivated"), active=False)
    d = decide(queued_run(), Observed(status={"phase": "Running"}, jobs={"train": kueue_job(suspend=True)},
                                      workloads={"train": by_admin}), SETTINGS)
    assert d.patch == [] and (d.status["phase"], conditions(d.status)["Suspended"]) == ("Suspended", ("True", "Deactivated"))
    assert "kubectl patch workloads.kueue.x-k8s.io -n ml job-demo-train-1a2b3" in d.status["message"]


def test_a_queued_run_suspended_before_its_job_exists_creates_none() -> None:
    d = decide(queued_run(suspend=True), Observed(dependencies={"Dataset/books": {"status": {"phase": "Succeeded"}}}),
               SETTINGS)
    assert d.apply == [] and d.status["phase"] == "Suspended"


def test_without_a_readable_workload_the_runs_own_record_tells_preempted_from_queued() -> None:
    suspended = {"train": kueue_job(suspend=True)}
    d = decide(queued_run(), Observed(status={"phase": "Running", "stages": {"train": "Running"}}, jobs=suspended), SETTINGS)
    assert (d.status["phase"], conditions(d.status)["Suspended"]) == ("Preempted", ("True", "Preempted"))
    d = decide(queued_run(), Observed(status={"stages": {"train": "Queued"}}, jobs=suspended, workloads_readable=True),
               SETTINGS)
    assert d.status["phase"] == "Queued" and "is Kueue installed" in d.status["message"]


def test_a_waiting_job_follows_the_specs_queue_and_leaving_the_queue_hands_suspend_back() -> None:
    moved = resource("TrainingRun", {**RUN, "scheduling": {"queueName": "cpus"}})
    d = decide(moved, Observed(jobs={"train": kueue_job(suspend=True)}), SETTINGS)
    assert [p["metadata"]["labels"] for p in job_patches(d)] == [{QUEUE_LABEL: "cpus", PRIORITY_LABEL: None}]
    d = decide(resource("TrainingRun", RUN), Observed(jobs={"train": kueue_job(suspend=True)}), SETTINGS)
    labels, suspend = job_patches(d)
    assert labels["metadata"]["labels"] == {QUEUE_LABEL: None, PRIORITY_LABEL: None} and suspend["spec"] == {"suspend": False}
    # A running Job keeps its queue (Kueue's webhook refuses to move a running one).
    d = decide(moved, Observed(jobs={"train": kueue_job(active=1)}), SETTINGS)
    assert job_patches(d) == []
