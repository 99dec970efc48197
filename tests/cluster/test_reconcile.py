"""The reconcile decision, on plain dicts: dependencies, stage order, phases, suspend, generations."""

from __future__ import annotations

from typing import Any

from llmfab.operator.builders.common import revision
from llmfab.operator.reconcile import Observed, decide, job_state
from llmfab.operator.settings import OperatorSettings
from tests.cluster.test_builders import RUN, resource

SETTINGS = OperatorSettings()
READY_DATASET = {"metadata": {"generation": 1}, "status": {"phase": "Succeeded", "observedGeneration": 1}}


REV = revision(resource("TrainingRun", RUN))


def job(stage: str, *, active: int = 0, complete: bool = False, failed: str | None = None,
        suspend: bool = False, rev: str = REV) -> dict[str, Any]:
    conditions = []
    if complete:
        conditions.append({"type": "Complete", "status": "True"})
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": failed, "message": "pods failed"})
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"demo-{stage}-{rev}", "namespace": "ml",
                         "labels": {"llmfab.dev/revision": rev, "llmfab.dev/stage": stage}},
            "spec": {"suspend": suspend}, "status": {"active": active, "conditions": conditions}}


def applied_kinds(decision: Any) -> list[str]:
    return [f"{m['kind']}/{m['metadata']['name']}" for m in decision.apply]


def settle(status: dict[str, Any], decision: Any) -> dict[str, Any]:
    """The status after the decision's patch (a JSON merge patch)."""
    merged = dict(status)
    for k, v in decision.status.items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = v
    return merged


def test_missing_dependency_waits_and_names_it() -> None:
    d = decide(resource("TrainingRun", RUN), Observed(dependencies={"Dataset/books": None}), SETTINGS)
    assert d.apply == [] and d.waiting == "waiting for Dataset/books does not exist"
    assert d.status["phase"] == "Waiting"
    ready = d.status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "WaitingForDependency")
    assert "Dataset/books" in ready["message"]
    running = {"metadata": {"generation": 1}, "status": {"phase": "Running"}}
    d = decide(resource("TrainingRun", RUN), Observed(dependencies={"Dataset/books": running}), SETTINGS)
    assert d.waiting == "waiting for Dataset/books is not ready (phase Running)"


def test_ready_dependency_creates_the_first_stage_job_once() -> None:
    run = resource("TrainingRun", RUN)
    d = decide(run, Observed(dependencies={"Dataset/books": READY_DATASET}), SETTINGS)
    assert applied_kinds(d) == [f"ConfigMap/demo-spec-{REV}", f"Job/demo-train-{REV}"]
    assert (d.status["phase"], d.status["stage"], d.status["observedGeneration"]) == ("Pending", "train", 3)
    assert [e[1] for e in d.events] == ["JobCreated"]
    # Next pass: the job exists and the workload reported Running from its pod: nothing to rewrite.
    status = {**settle({}, d), "phase": "Running", "step": 7}
    d2 = decide(run, Observed(status=status, jobs={"train": job("train", active=1)}), SETTINGS)
    assert f"Job/demo-train-{REV}" not in applied_kinds(d2)  # the Job is never re-created
    assert "phase" not in d2.status and "step" not in d2.status and d2.events == []


def test_pending_then_running_when_the_workload_has_not_reported() -> None:
    run = resource("TrainingRun", RUN)
    d = decide(run, Observed(status={"phase": "Pending", "stage": "train", "observedGeneration": 3,
                                     "conditions": [{"reason": "JobCreated"}]},
                             jobs={"train": job("train", active=1)}), SETTINGS)
    assert d.status["phase"] == "Running" and d.events[0][1] == "Running"


def test_training_succeeds_then_evaluation_runs_without_moving_the_phase() -> None:
    run = resource("TrainingRun", RUN)
    obs = Observed(status={"phase": "Running", "stage": "train", "observedGeneration": 3},
                   jobs={"train": job("train", complete=True)})
    d = decide(run, obs, SETTINGS)
    assert d.status["phase"] == "Succeeded" and f"Job/demo-eval-{REV}" in applied_kinds(d)
    assert d.status["conditions"][0]["status"] == "True" and d.status["completionTime"]
    status = settle(obs.status, d)
    assert status["stages"] == {"train": "Succeeded", "eval": "Pending"}
    d = decide(run, Observed(status=status, jobs={"train": job("train", complete=True),
                                                   "eval": job("eval", failed="BackoffLimitExceeded")}), SETTINGS)
    assert "phase" not in d.status
    assert ("Warning", "EvalFailed", "eval job failed") in d.events
    assert d.status["stages"]["eval"] == "Failed"
    status = settle(status, d)
    d = decide(run, Observed(status=status, jobs={"train": job("train", complete=True),
                                                   "eval": job("eval", failed="BackoffLimitExceeded")}), SETTINGS)
    assert d.status == {} and d.events == []  # the same look again: nothing new


def test_a_failed_training_job_fails_the_run_with_the_jobs_reason() -> None:
    d = decide(resource("TrainingRun", RUN),
               Observed(status={"phase": "Running"}, jobs={"train": job("train", failed="BackoffLimitExceeded")}),
               SETTINGS)
    assert d.status["phase"] == "Failed"
    failed = {c["type"]: c for c in d.status["conditions"]}["Failed"]
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert d.events[0][0] == "Warning"


def test_suspend_suspends_the_running_job_and_resume_unsuspends_it() -> None:
    suspended = resource("TrainingRun", {**RUN, "suspend": True})
    d = decide(suspended, Observed(status={"phase": "Running"}, jobs={"train": job("train", active=2)}), SETTINGS)
    assert d.patch == [{"apiVersion": "batch/v1", "kind": "Job",
                        "metadata": {"name": f"demo-train-{REV}", "namespace": "ml"}, "spec": {"suspend": True}}]
    assert d.status["phase"] == "Suspended"
    assert {c["type"]: c["status"] for c in d.status["conditions"]}["Suspended"] == "True"
    resumed = resource("TrainingRun", RUN)
    d = decide(resumed, Observed(status=settle({}, d), jobs={"train": job("train", suspend=True)}), SETTINGS)
    assert d.patch[0]["spec"] == {"suspend": False}


def test_a_new_revision_starts_new_jobs_and_removes_the_old_revisions() -> None:
    old = job("train", active=1, rev="0ld0ld00")
    d = decide(resource("TrainingRun", RUN, generation=3),
               Observed(status={"phase": "Running", "observedGeneration": 2}, stale=[old],
                        dependencies={"Dataset/books": READY_DATASET}), SETTINGS)
    assert d.delete == [old] and f"Job/demo-train-{REV}" in applied_kinds(d)
    assert d.status["observedGeneration"] == 3


def test_inference_service_quantizes_evaluates_then_serves() -> None:
    svc = resource("InferenceService", {"model": {"trainingRun": "base"}})
    trained = {"metadata": {"generation": 1}, "status": {"phase": "Succeeded"}}
    deps = {"TrainingRun/base": trained}
    d = decide(svc, Observed(dependencies=deps), SETTINGS)
    assert f"Job/demo-quantize-{revision(svc)}" in applied_kinds(d) and d.status["stage"] == "quantize"
    jobs = {"quantize": job("quantize", complete=True), "eval": job("eval", active=1)}
    d = decide(svc, Observed(status=settle({}, d), jobs=jobs, dependencies=deps), SETTINGS)
    assert d.status["phase"] == "Running" and d.status["stage"] == "eval"
    jobs["eval"] = job("eval", complete=True)
    d = decide(svc, Observed(status={"phase": "Running", "stage": "eval"}, jobs=jobs, deployment=None), SETTINGS)
    assert {"Deployment/demo", "Service/demo"} <= set(applied_kinds(d))
    assert d.status["readyReplicas"] == 0 and d.status["conditions"][0]["status"] == "False"
    dep = {"status": {"readyReplicas": 1}}
    d = decide(svc, Observed(status=settle({}, d), jobs=jobs, deployment=dep), SETTINGS)
    assert d.status["url"] == "http://demo.ml.svc:8000/v1" and d.status["readyReplicas"] == 1
    ready = d.status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Serving")
    failing = {"quantize": job("quantize", failed="BackoffLimitExceeded")}
    d = decide(svc, Observed(status={"phase": "Running"}, jobs=failing), SETTINGS)
    assert d.status["phase"] == "Failed"  # a service that cannot quantize cannot serve


def test_job_state_reads_the_job_controllers_verdicts() -> None:
    assert job_state(job("x", complete=True)).state == "succeeded"
    assert job_state(job("x", failed="DeadlineExceeded")).reason == "DeadlineExceeded"
    assert job_state(job("x", active=1)).state == "active"
    assert job_state(job("x")).state == "pending"
    ray = {"kind": "RayJob", "status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}}
    assert job_state(ray).state == "succeeded"


def test_more_nodes_than_the_artifact_volume_can_serve_fail_naming_the_field() -> None:
    run = resource("TrainingRun", {**RUN, "parallelism": {"nodes": 2}})
    d = decide(run, Observed(dependencies={"Dataset/books": READY_DATASET}), OperatorSettings(max_nodes=1))
    assert d.apply == [] and d.status["phase"] == "Failed"
    assert d.status["message"].startswith("spec.parallelism.nodes: 2 pods cannot share")
    assert {c["type"]: c["reason"] for c in d.status["conditions"]}["Failed"] == "TooManyNodes"


def test_a_suspended_ray_dataset_holds_back_its_ray_job() -> None:
    spec = {"sources": [{"path": "a.txt"}], "engine": {"type": "ray", "ray": {"cluster": "rc"}}}
    d = decide(resource("Dataset", {**spec, "suspend": True}), Observed(), SETTINGS)
    assert d.apply == [] and d.status["phase"] == "Suspended"
    d = decide(resource("Dataset", spec), Observed(), SETTINGS)
    assert [m["kind"] for m in d.apply] == ["ConfigMap", "RayJob"]


def test_a_serving_service_with_feedback_reports_the_feedback_apps_url() -> None:
    svc = resource("InferenceService", {"model": {"path": "/m"}, "quantization": {"method": "none"},
                                        "eval": {"enabled": False},
                                        "feedback": {"enabled": True, "tokenSecret": {"name": "fb"}}})
    d = decide(svc, Observed(deployment={"status": {"readyReplicas": 1}}), SETTINGS)
    assert d.status["feedbackUrl"] == "http://demo.ml.svc:8080/" and d.status["url"] == "http://demo.ml.svc:8000/v1"


class _Recorder:
    """Takes what ``carry_out`` does to the cluster; only the events matter here."""

    def __init__(self) -> None:
        self.status: list[dict[str, Any]] = []

    def apply(self, manifest: Any) -> None:
        pass

    def patch(self, manifest: Any) -> None:
        pass

    def delete(self, child: Any) -> bool:
        return True

    def patch_status(self, res: Any, fields: dict[str, Any]) -> None:
        self.status.append(fields)


def test_a_pass_that_reads_the_status_from_before_the_last_patch_posts_no_second_transition(monkeypatch: Any) -> None:
    """kopf's body follows the watch stream: a timer pass right after the change pass can still
    see the status from before the change pass's patch and decide the same transition."""
    from llmfab.operator import handlers

    posted: list[str] = []
    monkeypatch.setattr(handlers.kopf, "event", lambda body, type, reason, message: posted.append(reason))
    monkeypatch.setattr(handlers, "TRANSITIONS", handlers.LastTransitions())
    run = resource("TrainingRun", RUN)
    run.metadata.uid = "uid-1"
    stale = Observed(status={"phase": "Pending", "stage": "train", "observedGeneration": 3,
                             "conditions": [{"reason": "JobCreated"}]}, jobs={"train": job("train", active=1)})
    kube = _Recorder()
    for _ in range(2):  # the change pass, then a timer pass that has not seen its patch yet
        d = decide(run, stale, SETTINGS)
        assert d.transition is not None and d.transition[1] in d.events
        handlers.carry_out(d, run, {}, kube)  # type: ignore[arg-type]
    assert posted == ["Running"] and len(kube.status) == 2  # the status patch is idempotent; the event is not
    # A new generation with the same phase is news again, and so is the next transition.
    run.metadata.generation = 4
    handlers.carry_out(decide(run, stale, SETTINGS), run, {}, kube)  # type: ignore[arg-type]
    settled = settle(stale.status, decide(run, stale, SETTINGS))
    done = Observed(status=settled, jobs={"train": job("train", complete=True)})
    handlers.carry_out(decide(run, done, SETTINGS), run, {}, kube)  # type: ignore[arg-type]
    assert posted == ["Running", "Running", "Completed"]
