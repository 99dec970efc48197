"""What a resource with ``spec.scheduling.queueName`` gives Kueue: labels on its Jobs and server
Deployment, and the one change the operator makes to a Kueue Workload (``spec.active``).

Kueue's batch/v1 Job integration (kueue.sigs.k8s.io/docs/tasks/run/jobs) reads the LocalQueue from
the Job's label ``kueue.x-k8s.io/queue-name`` and the WorkloadPriorityClass from
``kueue.x-k8s.io/priority-class``; it makes one Workload per Job with one pod set of
``parallelism`` pods, so a multi-node TrainingRun's Indexed Job is admitted whole or not at all
(no pod-group labels needed: those are for plain pods). From then on Kueue owns the Job's
``spec.suspend``: it unsuspends the Job to admit it and suspends it to preempt it, and it would undo
any other writer (its reconciler unsuspends a suspended Job whose Workload is admitted). The
operator therefore creates queued Jobs suspended and never patches their ``suspend`` again; the
user's ``spec.suspend`` becomes the Workload's ``spec.active: false``, Kueue's documented way to
stop a workload and keep it out of the queue (kueue.sigs.k8s.io/docs/concepts/workload, "Active").
"""

from __future__ import annotations

from typing import Any

from llmfab.api.common import Resource
from llmfab.operator.builders.common import Manifest, queue_name

GROUP = "kueue.x-k8s.io"
QUEUE_LABEL = f"{GROUP}/queue-name"
PRIORITY_LABEL = f"{GROUP}/priority-class"
JOB_UID_LABEL = f"{GROUP}/job-uid"  # Kueue's label on the Workload it made for a Job
WORKLOAD_VERSIONS = (f"{GROUP}/v1beta2", f"{GROUP}/v1beta1")  # newest first; both carry spec.active
SUSPENDED_BY = "llmfab.dev/suspended-by"
"""On a Workload the operator deactivated for ``spec.suspend``: only such a Workload is activated
again on resume, never one that Kueue or an admin deactivated."""
SCHEDULING_GATE = f"{GROUP}/admission"  # on a plain pod (a server replica) not admitted yet


def kueue_labels(res: Resource) -> dict[str, str | None]:
    """The Kueue labels a child of ``res`` carries; ``None`` for one to remove (a merge patch), so
    the same dict sets them on a new Job and clears them from one that left its queue."""
    queue = queue_name(res)
    priority = res.spec.scheduling.priority_class_name if queue else None  # type: ignore[attr-defined]
    return {QUEUE_LABEL: queue, PRIORITY_LABEL: priority}


def with_kueue_labels(labels: dict[str, str], res: Resource) -> dict[str, str]:
    """``labels`` plus the Kueue labels ``res`` asks for (none without a queue)."""
    return {**labels, **{k: v for k, v in kueue_labels(res).items() if v is not None}}


def kueue_managed(child: dict[str, Any]) -> bool:
    """Whether Kueue owns this Job's ``spec.suspend``: the Job's own label decides, not the spec, so
    a Job keeps its owner until its labels change (which the operator does only while it waits)."""
    return QUEUE_LABEL in ((child.get("metadata") or {}).get("labels") or {})


def labels_patch(job: dict[str, Any], res: Resource) -> Manifest | None:
    """A merge patch that moves a waiting Job to the queue and priority the spec names now (Kueue
    moves its Workload: "handleQueueNameChange"), or None when the labels already match."""
    have = (job.get("metadata") or {}).get("labels") or {}
    want = kueue_labels(res)
    if all(have.get(k) == v for k, v in want.items()):
        return None
    meta = job["metadata"]
    return {"apiVersion": job.get("apiVersion", "batch/v1"), "kind": job.get("kind", "Job"),
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace"), "labels": want}}


def keep_queue_of(deployment: Manifest, existing: dict[str, Any] | None) -> Manifest:
    """A server Deployment keeps the queue it was created with: Kueue's webhook refuses to change
    a Deployment's queue while it has ready replicas, and to remove it ever, and a refused patch
    would hold back every other change of the Deployment. Delete the Deployment (the operator
    makes it again) to move a serving InferenceService to another queue."""
    if existing is None:
        return deployment
    have = (existing.get("metadata") or {}).get("labels") or {}
    labels = {k: v for k, v in deployment["metadata"]["labels"].items() if k not in (QUEUE_LABEL, PRIORITY_LABEL)}
    labels |= {k: have[k] for k in (QUEUE_LABEL, PRIORITY_LABEL) if k in have}
    return {**deployment, "metadata": {**deployment["metadata"], "labels": labels}}


def admission_gated(pod: dict[str, Any]) -> bool:
    """A pod Kueue holds until its workload is admitted (its scheduling gate)."""
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(g.get("name") == SCHEDULING_GATE for g in gates)


def workload_active_patch(workload: dict[str, Any], active: bool) -> Manifest:
    """Deactivate a Workload for ``spec.suspend`` (marking it as the operator's doing), or activate
    one the operator deactivated (removing the mark)."""
    meta = workload["metadata"]
    return {"apiVersion": workload["apiVersion"], "kind": "Workload",
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace"),
                         "annotations": {SUSPENDED_BY: None if active else "spec.suspend"}},
            "spec": {"active": active}}
