"""A stand-in for Kueue's batch/v1 Job integration (no Kueue binary runs here), as a controller of
the test API server, with the test playing Kueue's scheduler (``admit``, ``preempt``).

What it does follows Kueue v0.19's documentation and its job reconciler
(pkg/controller/jobframework/reconciler.go, pkg/controller/jobs/job/job_controller.go):

- a Job labelled ``kueue.x-k8s.io/queue-name`` gets one Workload: named ``job-<job>-<hash>`` (the
  first 5 hex digits of SHA-1 over kind, group, name and uid), labelled ``kueue.x-k8s.io/job-uid``,
  owned by the Job, ``spec.queueName`` from the label, one pod set ``main`` of ``parallelism`` pods
  with the Job's pod template, and with ``kueue.x-k8s.io/priority-class`` a ``priorityClassRef`` to
  that WorkloadPriorityClass and its value as ``priority`` (no Workload while the class is missing:
  "Referencing a WorkloadPriorityClass"). Until admitted it reads ``QuotaReserved=False``, reason
  ``Pending``, with ``pending_message`` (what Kueue's scheduler says of a workload that does not fit);
- "7. handle job is suspended": a suspended Job whose Workload is admitted is unsuspended
  (``startJob``); "8. handle job is unsuspended": a running Job whose Workload is not admitted is
  suspended again (``stopJob``, recorded in ``stopped_unadmitted``: whoever unsuspended it fought
  Kueue);
- ``admit``: ``SetQuotaReservation`` (``QuotaReserved=True``, ``status.admission`` with one pod set
  assignment, ``Evicted``/``Preempted`` reset to False with "Previously: ..."), then ``Admitted=True``;
- ``preempt``: ``Evicted=True`` reason ``Preempted`` and ``Preempted=True`` reason
  ``InClusterQueue``, with the messages of concepts/preemption; "6. handle eviction" suspends the Job
  and, once no pod of it is active, releases the quota
  (``QuotaReserved=False``, ``Admitted=False``, ``status.admission`` gone) and sets ``Requeued``
  (True after a preemption, False after a deactivation);
- ``spec.active: false`` on an admitted Workload evicts it (reason ``InactiveWorkload``) and it is
  not requeued (concepts/workload, "Active");
- a finished Job (``Complete``/``Failed``) finishes its Workload (``Finished=True``).

Not emulated: the scheduler itself (quota, flavors, cohorts, fair sharing: the test decides what
is admitted and preempted), the admission webhook (a Job created unsuspended is stopped by step 8
instead of being created suspended), partial admission, pod sets from ``podSetInfo`` (node
selectors and tolerations of a ResourceFlavor), admission checks, ``waitForPodsReady``, and
``Stop`` clearing the Job's ``status.startTime`` (the Job controller stand-in writes its status
from the event it handles and would overwrite it).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

from .objectstore import ObjectStore, now
from .watches import WatchEvent

JSON = dict[str, Any]
GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
QUEUE_LABEL = f"{GROUP}/queue-name"
PRIORITY_LABEL = f"{GROUP}/priority-class"
JOB_UID_LABEL = f"{GROUP}/job-uid"
CRDS = sorted((Path(__file__).resolve().parent / "third_party" / "kueue-v0.19.2").glob("*.yaml"))
PENDING = "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor gpu"


def workload_name(job: JSON) -> str:
    """``GetWorkloadNameForOwnerWithGVK`` for a batch/v1 Job."""
    meta = job["metadata"]
    digest = hashlib.sha1("\n".join(["Job", "batch", meta["name"], meta["uid"]]).encode()).hexdigest()
    prefix = ("job-" + meta["name"])[: 253 - 6]
    return f"{prefix}-{digest[:5]}"


def condition(wl: JSON, ctype: str) -> JSON | None:
    return next((c for c in (wl.get("status") or {}).get("conditions") or [] if c["type"] == ctype), None)


def is_true(wl: JSON, ctype: str) -> bool:
    c = condition(wl, ctype)
    return c is not None and c["status"] == "True"


def _set(wl: JSON, ctype: str, status: str, reason: str, message: str) -> None:
    """``apimeta.SetStatusCondition``: the transition time moves only when the status does."""
    conditions = wl.setdefault("status", {}).setdefault("conditions", [])
    new = {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": now(),
           "observedGeneration": wl["metadata"].get("generation", 1)}
    for i, c in enumerate(conditions):
        if c["type"] == ctype:
            if c["status"] == status:
                new["lastTransitionTime"] = c["lastTransitionTime"]
            conditions[i] = new
            return
    conditions.append(new)


def _reset(wl: JSON, ctype: str, reason: str) -> None:
    """``resetActiveCondition``: a True condition becomes False, "Previously: <message>"."""
    c = condition(wl, ctype)
    if c is not None and c["status"] == "True":
        _set(wl, ctype, "False", reason, f"Previously: {c['message']}")


class KueueStandIn:
    def __init__(self, store: ObjectStore, pending_message: str = PENDING) -> None:
        self.store = store
        self.pending_message = pending_message
        self.stopped_unadmitted: list[str] = []  # Jobs someone unsuspended without admission

    # --- the scheduler's decisions, made by the test ------------------------------------------

    def admit(self, job: str, namespace: str = "default", cluster_queue: str = "cluster-queue") -> JSON:
        with self.store.lock:
            wl = self._workload_of(self._job(job, namespace))
            if wl is None or (wl.get("spec") or {}).get("active") is False:
                raise AssertionError(f"Job {job} has no active Workload to admit: {wl}")
            wl = copy.deepcopy(wl)
            pod_set = wl["spec"]["podSets"][0]
            wl["status"]["admission"] = {"clusterQueue": cluster_queue, "podSetAssignments": [
                {"name": pod_set["name"], "count": pod_set["count"], "flavors": {"nvidia.com/gpu": "gpu"},
                 "resourceUsage": {"nvidia.com/gpu": str(pod_set["count"])}}]}
            _set(wl, "QuotaReserved", "True", "QuotaReserved", f"Quota reserved in ClusterQueue {cluster_queue}")
            for ctype in ("Evicted", "Preempted"):
                _reset(wl, ctype, "QuotaReserved")
            _set(wl, "Admitted", "True", "Admitted", "The workload is admitted")
            return self._write_status(wl)

    def preempt(self, job: str, namespace: str = "default") -> JSON:
        with self.store.lock:
            wl = self._workload_of(self._job(job, namespace))
            if wl is None or not is_true(wl, "QuotaReserved"):
                raise AssertionError(f"Job {job}'s Workload holds no quota to preempt: {wl}")
            wl = copy.deepcopy(wl)
            why = ("Preempted to accommodate a workload (UID: 00000000-preemptor, JobUID: 00000000-job) due to "
                   "prioritization in the ClusterQueue")
            _set(wl, "Evicted", "True", "Preempted", why)
            _set(wl, "Preempted", "True", "InClusterQueue", why)
            return self._write_status(wl)

    def workload(self, job: str, namespace: str = "default") -> JSON | None:
        """The Workload of Job ``job``; None while either does not exist."""
        with self.store.lock:
            found = self.store.find(self._type("batch", "jobs"), namespace, job)
            return self._workload_of(found) if found is not None else None

    # --- the controller -------------------------------------------------------------------------

    def __call__(self, ev: WatchEvent) -> None:
        if ev.type == "DELETED":
            return
        if ev.key == ("batch", "jobs") and QUEUE_LABEL in (ev.obj["metadata"].get("labels") or {}):
            self._reconcile(ev.obj["metadata"]["namespace"], ev.obj["metadata"]["name"])
        elif ev.key == (GROUP, "workloads"):
            owner = next((r for r in ev.obj["metadata"].get("ownerReferences") or [] if r.get("kind") == "Job"), None)
            if owner is not None:
                self._reconcile(ev.obj["metadata"]["namespace"], owner["name"])

    def _reconcile(self, namespace: str, name: str) -> None:
        job = self.store.find(self._type("batch", "jobs"), namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp") or QUEUE_LABEL not in job["metadata"].get("labels", {}):
            return
        wl = self._workload_of(job)
        if wl is None:
            self._create_workload(job)
            return
        conditions = {c["type"] for c in (job.get("status") or {}).get("conditions") or [] if c["status"] == "True"}
        if conditions & {"Complete", "Failed"}:
            if not is_true(wl, "Finished"):
                wl = copy.deepcopy(wl)
                reason = "Succeeded" if "Complete" in conditions else "Failed"
                _set(wl, "Finished", "True", reason, f"Job finished ({reason})")
                self._write_status(wl)
            return
        if (wl.get("spec") or {}).get("active") is False and is_true(wl, "QuotaReserved") and not is_true(wl, "Evicted"):
            wl = copy.deepcopy(wl)
            _set(wl, "Evicted", "True", "InactiveWorkload", "The workload is deactivated")
            self._write_status(wl)
            return
        suspended = bool(job["spec"].get("suspend"))
        if is_true(wl, "Evicted"):
            if not suspended:
                self._stop(job)
            elif not (job.get("status") or {}).get("active") and is_true(wl, "QuotaReserved"):
                self._release(wl)
        elif suspended and is_true(wl, "Admitted"):
            self._set_suspend(job, False)
        elif not suspended and not is_true(wl, "Admitted"):
            self.stopped_unadmitted.append(name)
            self._stop(job)

    def _create_workload(self, job: JSON) -> None:
        meta = job["metadata"]
        labels = meta.get("labels") or {}
        spec: JSON = {"active": True, "queueName": labels[QUEUE_LABEL], "podSets": [
            {"name": "main", "count": job["spec"].get("parallelism", 1), "template": copy.deepcopy(job["spec"]["template"])}]}
        if PRIORITY_LABEL in labels:
            wpc = self.store.find(self._type(GROUP, "workloadpriorityclasses"), None, labels[PRIORITY_LABEL])
            if wpc is None:
                return  # WorkloadPriorityClassNotFound: Kueue makes no Workload until it exists
            spec["priorityClassRef"] = {"group": GROUP, "kind": "WorkloadPriorityClass", "name": labels[PRIORITY_LABEL]}
            spec["priority"] = wpc["value"]
        wl = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Workload",
              "metadata": {"name": workload_name(job), "namespace": meta["namespace"],
                           "labels": {JOB_UID_LABEL: meta["uid"]},
                           "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                                "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
              "spec": spec}
        created, _ = self.store.create(self._type(GROUP, "workloads"), meta["namespace"], wl)
        created = copy.deepcopy(created)
        _set(created, "QuotaReserved", "False", "Pending", self.pending_message)
        self._write_status(created)

    def _stop(self, job: JSON) -> None:
        """``Job.Stop``: suspend (the Job controller then deletes its pods)."""
        self._set_suspend(job, True)

    def _release(self, wl: JSON) -> None:
        """The Job stopped: its quota goes back, and it is requeued unless it was deactivated."""
        wl = copy.deepcopy(wl)
        evicted = condition(wl, "Evicted") or {}
        requeued = evicted.get("reason") == "Preempted"
        _set(wl, "Requeued", "True" if requeued else "False", evicted.get("reason", "Pending"), evicted.get("message", ""))
        _set(wl, "QuotaReserved", "False", "Pending", evicted.get("message", ""))
        _set(wl, "Admitted", "False", "NoReservation", "The workload has no reservation")
        wl["status"].pop("admission", None)
        self._write_status(wl)

    def _set_suspend(self, job: JSON, suspend: bool) -> None:
        body = copy.deepcopy(job)
        body["spec"]["suspend"] = suspend
        self.store.update(self._type("batch", "jobs"), job["metadata"]["namespace"], job["metadata"]["name"], body)

    def _write_status(self, wl: JSON) -> JSON:
        meta = wl["metadata"]
        return self.store.update(self._type(GROUP, "workloads"), meta["namespace"], meta["name"], wl,
                                 subresource="status")[0]

    def _workload_of(self, job: JSON) -> JSON | None:
        found = [w for _, w in self.store.live_objects(self._type(GROUP, "workloads"))
                 if (w["metadata"].get("labels") or {}).get(JOB_UID_LABEL) == job["metadata"]["uid"]]
        return found[0] if found else None

    def _job(self, name: str, namespace: str) -> JSON:
        return self.store.get(self._type("batch", "jobs"), namespace, name)

    def _type(self, group: str, plural: str) -> Any:
        return self.store.types[(group, plural)]
