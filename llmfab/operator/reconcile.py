"""One reconcile step, as a pure function: (resource, what the cluster shows) -> what to do.

The handlers read the resource's children and the resources it references, call :func:`decide`,
and carry out the :class:`Decision` (apply manifests, delete stale children, patch status, post
events). Keeping the decision pure is what lets every rule below be tested on plain dicts:

- the stages of a kind, in order, and which of them move the phase come from ``llmfab.stages``
  (the same rules ``llmfab up`` follows);
- a spec the cluster refuses (``builders/refusals.py``: insecure, outside the chart's pod policy)
  fails before any child is made, and a resource refused after its children exist (stored before
  the rule, or the policy tightened since) has its running workloads deleted (:func:`_stop`);
- a resource whose references are not Ready waits (``phase: Waiting``, condition ``Ready=False``,
  reason ``WaitingForDependency`` naming them) before its first child of a revision exists;
- each stage but ``serve`` is a Job of the current output revision (a hash of the spec fields that
  change the artifact); a change of them starts new Jobs and removes the old revision's, never
  mutating a running one;
- ``spec.suspend`` suspends the running Job (its pods go, checkpoints stay) and resumes it later;
- with ``spec.scheduling.queueName`` Kueue owns a Job's ``suspend`` (``queueing.py``): the Job is
  created suspended, the phase says whether it is Queued, admitted, Preempted or Suspended, and
  ``spec.suspend`` deactivates its Kueue Workload instead of touching the Job;
- the ``serve`` stage is a Deployment and Service, and KEDA's objects under ``spec.autoscaling``
  (``serving.py``); a cluster that cannot autoscale (no KEDA, chart setting) refuses the resource;
- the operator owns ``phase``, ``conditions``, ``message``, ``observedGeneration``, ``stage``,
  times and, for an InferenceService, ``url``/``readyReplicas``/``replicas``/``selector``/``scale``;
  progress (step, loss, documents, ...) belongs to the workload, which patches it from its pod, and
  is never written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llmfab.api.common import Phase, Resource, utc_now
from llmfab.api.dataset import Dataset
from llmfab.api.inference_service import InferenceService
from llmfab.api.training_run import TrainingRun
from llmfab.operator.builders.autoscaling import KedaApis, autoscaling_problems
from llmfab.operator.builders.common import Manifest, build_spec_config_map, generation, queue_name, revision
from llmfab.operator.builders.dataset import build_dataset_children, uses_ray_job
from llmfab.operator.builders.jobs import build_headless_service, build_stage_job, pods_and_processes
from llmfab.operator.builders.kueue import kueue_managed, labels_patch
from llmfab.operator.builders.refusals import Refusal, refusals
from llmfab.operator.queueing import active_patch, suspended_message, waiting
from llmfab.operator.serving import Seen, plan_serving
from llmfab.operator.settings import OperatorSettings
from llmfab.stages import is_primary, owns_phase, stages_for
from llmfab.status import conditions_for

State = Literal["pending", "active", "succeeded", "failed", "suspended"]
WORKLOAD_KINDS = (("batch/v1", "Job"), ("ray.io/v1", "RayJob"), ("apps/v1", "Deployment"))
"""The children that run pods: what a refusal stops and what a deletion waits for (deletion.py)."""


@dataclass(frozen=True)
class ChildState:
    state: State
    reason: str = ""
    message: str = ""


@dataclass
class Observed:
    """What the handler read from the API server for one resource."""

    status: dict[str, Any] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> Job/RayJob of this revision
    deployment: dict[str, Any] | None = None
    dependencies: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # "Kind/name" -> object
    stale: list[dict[str, Any]] = field(default_factory=list)  # children of older revisions
    # An InferenceService with spec.autoscaling (or one that had it): which KEDA kinds the cluster
    # serves, KEDA's objects that exist for it, and its server pods (when a wake began and ended).
    keda: KedaApis = field(default_factory=KedaApis)
    autoscaler: list[dict[str, Any]] = field(default_factory=list)
    server_pods: list[dict[str, Any]] = field(default_factory=list)
    # A queued resource: the Kueue Workload of each Kueue-managed Job (stage -> Workload), and
    # whether the cluster serves Workloads to this operator at all.
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    workloads_readable: bool = False
    pods: list[dict[str, Any]] = field(default_factory=list)  # every pod of the resource: its usage (usage.py)


@dataclass
class Decision:
    apply: list[Manifest] = field(default_factory=list)
    patch: list[Manifest] = field(default_factory=list)  # partial merge patches of existing children
    delete: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)  # merge patch of .status; {} = unchanged
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    # Posted only where one of ``delete`` removed something: a timer pass and a change pass may
    # decide the same stop at once, and the second one's delete finds nothing (404).
    events_if_deleted: list[tuple[str, str, str]] = field(default_factory=list)
    waiting: str | None = None  # the handler retries later (kopf.TemporaryError)
    # The phase transition among ``events``: ((phase, reason, stage, generation), its event). The
    # handler posts it once, though a timer pass may still see the status from before the change
    # pass's patch (kopf's body lags the API server) and decide the same transition again.
    transition: tuple[tuple[str, ...], tuple[str, str, str]] | None = None
    cold_start_seconds: float | None = None  # a wake from zero completed (the operator's metrics)


# --- reading children ----------------------------------------------------------------------------


def _condition(obj: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return dict(c)
    return None


def job_state(job: dict[str, Any]) -> ChildState:
    """A batch/v1 Job's state from its conditions (``Complete``/``Failed``, the Job controller's
    terminal verdicts) and counters; a RayJob's from ``jobDeploymentStatus``."""
    if job.get("kind") == "RayJob":
        return _ray_job_state(job)
    status = job.get("status") or {}
    if _condition(job, "Complete"):
        return ChildState("succeeded", "Completed", "job complete")
    failed = _condition(job, "Failed")
    if failed:
        reason = failed.get("reason") or "JobFailed"
        return ChildState("failed", reason, failed.get("message") or f"job failed ({reason})")
    if (job.get("spec") or {}).get("suspend"):
        return ChildState("suspended", "Suspended", "job suspended")
    if status.get("active"):
        return ChildState("active", "Running", f"{status['active']} pod(s) running")
    return ChildState("pending", "Starting", "waiting for pods")


def _ray_job_state(job: dict[str, Any]) -> ChildState:
    status = job.get("status") or {}
    deployment = status.get("jobDeploymentStatus", "")
    message = status.get("message", "")
    if deployment == "Complete" and status.get("jobStatus") == "SUCCEEDED":
        return ChildState("succeeded", "Completed", message or "ray job succeeded")
    if deployment in ("Complete", "Failed"):
        return ChildState("failed", status.get("reason") or "RayJobFailed", message or "ray job failed")
    if deployment == "Suspended":
        return ChildState("suspended", "Suspended", "ray job suspended")
    if deployment == "Running":
        return ChildState("active", "Running", message or "ray job running")
    return ChildState("pending", "Starting", message or "submitting the ray job")


def dependency_problem(key: str, obj: dict[str, Any] | None) -> str | None:
    """Why a referenced resource cannot be used yet, or None when it is Ready."""
    if obj is None:
        return f"{key} does not exist"
    status = obj.get("status") or {}
    if key.startswith("InferenceService/"):
        # Scaled to zero by its autoscaler counts as serving: a request wakes it, and its feedback
        # store is on the volume either way.
        idle = (status.get("scale") or {}).get("state") == "Idle"
        return None if (status.get("readyReplicas") or 0) >= 1 or idle else f"{key} is not serving yet"
    gen = (obj.get("metadata") or {}).get("generation")
    if status.get("phase") == Phase.SUCCEEDED and (gen is None or status.get("observedGeneration") in (None, gen)):
        return None
    return f"{key} is not ready (phase {status.get('phase', 'Pending')})"


# --- deciding --------------------------------------------------------------------------------------


def decide(res: Resource, observed: Observed, settings: OperatorSettings) -> Decision:
    d = Decision()
    refused = refusals(res, settings)
    if isinstance(res, InferenceService):
        refused += [Refusal("AutoscalingUnavailable", p) for p in autoscaling_problems(res, settings, observed.keda)]
    if refused:
        message = "; ".join(r.message for r in refused)
        _set_phase(d, res, observed, Phase.FAILED, refused[0].reason, message, stage=None)
        _stop(d, observed, message)
        d.delete.extend(c for c in observed.autoscaler if not c["metadata"].get("deletionTimestamp"))
        return d
    if not observed.jobs and observed.deployment is None:
        problems = [p for key in _refs(res) if (p := dependency_problem(key, observed.dependencies.get(key)))]
        if problems:
            message = "waiting for " + "; ".join(problems)
            _set_phase(d, res, observed, Phase.WAITING, "WaitingForDependency", message, stage=None)
            d.waiting = message
            return d
    if isinstance(res, TrainingRun) and res.spec.parallelism.nodes > settings.max_nodes:
        message = (
            f"spec.parallelism.nodes: {res.spec.parallelism.nodes} pods cannot share this cluster's "
            f"artifact volume (at most {settings.max_nodes} node(s): a ReadWriteOnce claim such as "
            "k3s local-path mounts on one node); install the chart with a ReadWriteMany "
            "artifacts.storageClassName (e.g. NFS) and training.maxNodes, or lower nodes"
        )
        _set_phase(d, res, observed, Phase.FAILED, "TooManyNodes", message, stage=None)
        return d
    d.delete.extend(observed.stale)
    states: dict[str, str] = {}
    _walk_stages(d, res, observed, settings, states)
    _record_stage_states(d, res, observed, states)
    return d


def _stop(d: Decision, observed: Observed, why: str) -> None:
    """A refused resource runs nothing: delete its serving Deployment and its unfinished Jobs and
    RayJobs (of any revision), keep its artifacts, and say in a Warning event what was stopped.

    The Deployment is deleted, not scaled to 0, as KServe removes a predictor it cannot serve
    rather than parking it: a Deployment left at 0 replicas would still carry the refused pod
    template (the open feedback app, the disallowed image), one ``kubectl scale`` by anyone with
    Deployment rights away from running again, and it is rebuilt from the spec anyway once the
    user fixes it. A finished Job runs nothing and is kept: its verdict stands, so a fix that
    leaves the revision as it was does not run the stage again. The handler deletes with
    ``propagationPolicy: Background``: each pod still gets SIGTERM and its grace period, and a
    fixed spec's Job of the same name is not held back by the old object.
    """
    running = [*observed.jobs.values(), *observed.stale, *([observed.deployment] if observed.deployment else [])]
    stop = [w for w in running
            if (w.get("apiVersion"), w.get("kind")) in WORKLOAD_KINDS and not w["metadata"].get("deletionTimestamp")
            and (w["kind"] == "Deployment" or job_state(w).state not in ("succeeded", "failed"))]
    if stop:
        d.delete.extend(stop)
        names = ", ".join(f"{w['kind']}/{w['metadata']['name']}" for w in stop)
        d.events_if_deleted.append(("Warning", "Stopped", f"stopped {names} (artifacts kept) because this cluster refuses "
                                               f"the spec; fix it and the operator recreates them: {why}"))


def _walk_stages(
    d: Decision, res: Resource, observed: Observed, settings: OperatorSettings, states: dict[str, str]
) -> None:
    """Stages in order: the first unfinished one decides what runs; the phase follows the first
    stage that owns it and has not succeeded."""
    suspend = bool(getattr(res.spec, "suspend", False))
    queue = queue_name(res)
    decided = False
    for stage in stages_for(res):
        if stage == "serve":
            _serve(d, res, observed, settings)
            states[stage] = "Running"
            return
        child = observed.jobs.get(stage)
        if child is None and suspend and (queue or (isinstance(res, Dataset) and uses_ray_job(res))):
            # A RayJob cannot be created suspended on an existing cluster, and a queued Job created
            # now would race Kueue's admission against the Workload's deactivation: hold it back.
            states[stage] = "Suspended"
            _set_phase(d, res, observed, Phase.SUSPENDED, "Suspended", f"{stage}: suspended before start", stage)
            return
        if child is None:
            d.apply.extend(_stage_children(res, stage, settings))
            states[stage] = "Queued" if queue else "Pending"
            if not decided:
                created = f"{stage}: created job for revision {revision(res)}"
                if queue:
                    _set_phase(d, res, observed, Phase.QUEUED, "Queued", f"{created}; queued in Kueue LocalQueue {queue}",
                               stage)
                else:
                    phase = Phase.SUSPENDED if suspend else Phase.PENDING
                    _set_phase(d, res, observed, phase, "Suspended" if suspend else "JobCreated", created, stage)
            return
        managed = _own_job(d, res, child, suspend)
        st = job_state(child)
        states[stage] = {"pending": "Pending", "active": "Running", "suspended": "Suspended",
                         "failed": "Failed", "succeeded": "Succeeded"}[st.state]
        if st.state in ("pending", "active", "suspended"):
            workload = observed.workloads.get(stage)
            w = None
            if managed and (patch := active_patch(workload, suspend)) is not None:
                d.patch.append(patch)
            if managed and st.state == "suspended" and not suspend:
                before = (observed.status.get("stages") or {}).get(stage)
                w = waiting(stage, queue or "", child, workload, before, observed.workloads_readable)
                states[stage] = "Pending" if w.phase == Phase.PENDING else str(w.phase)
            if decided:
                return
            if suspend:
                states[stage] = "Suspended"
                message = (suspended_message(stage, workload, child["metadata"]["name"]) if managed
                           else f"{stage}: suspended; pods deleted, checkpoints kept")
                _set_phase(d, res, observed, Phase.SUSPENDED, "Suspended", message, stage)
            elif w is not None:
                _set_phase(d, res, observed, w.phase, w.reason, w.message, stage, extra={"message": w.message})
            elif st.state == "pending":
                _set_phase(d, res, observed, Phase.PENDING, "Starting", f"{stage}: {st.message}", stage)
            else:
                _running(d, res, observed, stage, st)
            return
        if st.state == "failed" and owns_phase(stage, res.KIND):
            if not decided:
                _set_phase(d, res, observed, Phase.FAILED, st.reason, f"{stage}: {st.message}", stage)
            return
        if st.state == "succeeded" and is_primary(stage, res.KIND) and not decided:
            _set_phase(d, res, observed, Phase.SUCCEEDED, "Completed", f"{stage} finished", stage)
            decided = True


def _record_stage_states(d: Decision, res: Resource, observed: Observed, states: dict[str, str]) -> None:
    """``status.stages`` (stage -> state of this revision's Jobs), and an event for each stage that
    finished since the last look and does not move the phase (a TrainingRun's evaluation)."""
    before = observed.status.get("stages") or {}
    if states == before:
        return
    d.status["stages"] = states
    for stage, state in states.items():
        if state in ("Succeeded", "Failed") and before.get(stage) != state and not owns_phase(stage, res.KIND):
            kind = "Warning" if state == "Failed" else "Normal"
            reason = f"{stage.capitalize()}{'Failed' if state == 'Failed' else 'Completed'}"
            d.events.append((kind, reason, f"{stage} job {state.lower()}"))


def _refs(res: Resource) -> list[str]:
    return [f"{kind}/{name}" for kind, name in res.references()]


def _stage_children(res: Resource, stage: str, settings: OperatorSettings) -> list[Manifest]:
    """What a stage's pods need, in creation order: the spec ConfigMap of this revision first."""
    if isinstance(res, Dataset) and stage == "data":
        return [build_spec_config_map(res), *build_dataset_children(res, settings)]
    children = [build_spec_config_map(res), build_stage_job(res, stage, settings)]
    if isinstance(res, TrainingRun) and pods_and_processes(res, stage)[0] > 1:
        children.insert(0, build_headless_service(res, settings, stage))
    return children


def _own_job(d: Decision, res: Resource, child: dict[str, Any], suspend: bool) -> bool:
    """Keep an existing Job as the spec says, within what the operator owns; whether Kueue owns its
    ``suspend``. A waiting (suspended) Job follows the spec's queue and priority labels; a Job
    without the queue label is the operator's to suspend and resume, one with it Kueue's."""
    if child.get("kind") != "Job":
        return False
    waiting_now = bool((child.get("spec") or {}).get("suspend"))
    relabel = labels_patch(child, res) if waiting_now else None
    if relabel is not None:
        d.patch.append(relabel)
    managed = queue_name(res) is not None if relabel is not None else kueue_managed(child)
    if not managed and waiting_now != suspend:
        d.patch.append(_suspend_patch(child, suspend))
    return managed


def _suspend_patch(job: dict[str, Any], suspend: bool) -> Manifest:
    meta = job["metadata"]
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace")},
            "spec": {"suspend": suspend}}


def _running(d: Decision, res: Resource, observed: Observed, stage: str, st: ChildState) -> None:
    """While its pods run, the workload's own phase and messages stand (it reports from inside);
    the operator writes Running only where it has not, or where the stage changed."""
    status = observed.status
    workload_reported = (
        status.get("phase") in (Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED) and status.get("stage") == stage
    )
    if not workload_reported:
        _set_phase(d, res, observed, Phase.RUNNING, st.reason, f"{stage}: {st.message}", stage)


def _serve(d: Decision, res: Resource, observed: Observed, settings: OperatorSettings) -> None:
    assert isinstance(res, InferenceService)
    seen = Seen(observed.deployment, observed.status.get("scale"), observed.keda, tuple(observed.autoscaler),
                tuple(observed.server_pods))
    s = plan_serving(res, settings, seen)
    d.apply += s.children
    d.delete += s.remove
    d.cold_start_seconds = s.cold_start_seconds
    _set_phase(d, res, observed, s.phase, s.reason, s.message, "serve", ready=s.ready, extra=s.status)


def _set_phase(
    d: Decision,
    res: Resource,
    observed: Observed,
    phase: Phase,
    reason: str,
    message: str,
    stage: str | None,
    ready: bool | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Patch the operator-owned fields when something in them changed; post an event on a
    transition (phase or reason)."""
    status = observed.status
    gen = generation(res)
    conditions = status.get("conditions") or []
    last_reason = conditions[0].get("reason") if conditions else None
    extra = extra or {}
    changed_extra = any(status.get(k) != v for k, v in extra.items())
    transition = status.get("phase") != phase or last_reason != reason or status.get("stage") != stage
    if not transition and status.get("observedGeneration") == gen and not changed_extra:
        return
    # A stopped pod reports Failed/Terminated after the operator recorded the stop (Suspended,
    # Preempted): the phase is put back, without a second event for the same stop.
    recorded = (phase in (Phase.SUSPENDED, Phase.PREEMPTED) and status.get("phase") == Phase.FAILED
                and stage is not None and status.get("stage") == stage
                and (status.get("stages") or {}).get(stage) == phase)
    patch: dict[str, Any] = {
        "phase": str(phase),
        "message": message,
        "stage": stage,
        "observedGeneration": gen,
        **extra,
    }
    if transition or status.get("observedGeneration") != gen:
        patch["conditions"] = conditions_for(phase, reason, message, gen, ready)
        if phase in (Phase.RUNNING, Phase.PENDING) and not status.get("startTime"):
            patch["startTime"] = utc_now()
        if phase in (Phase.SUCCEEDED, Phase.FAILED):
            patch["completionTime"] = utc_now()
        elif status.get("completionTime"):
            patch["completionTime"] = None
        if not recorded:
            event = ("Warning" if phase == Phase.FAILED else "Normal", reason, message)
            d.events.append(event)
            d.transition = ((str(phase), reason, stage or "", str(gen)), event)
    d.status.update(patch)
