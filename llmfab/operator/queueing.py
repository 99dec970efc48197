"""A stage Job that Kueue manages, as the resource's phase: pure functions of the Job, its Kueue
Workload and the spec (``reconcile.decide`` calls them; the Jobs' labels: builders/kueue.py).

Kueue owns such a Job's ``spec.suspend``, so a suspended Job alone does not say why it waits. The
Workload Kueue made for it does (kueue.sigs.k8s.io/docs/concepts/workload, .../preemption):

- ``Evicted=True`` (reason ``Preempted``, or ``PodsReadyTimeout``, ``ClusterQueueStopped``, ...)
  after it ran: **Preempted**. Kueue suspended the Job, the Job controller deleted its pods, each
  got SIGTERM and the trainer saved its step; Kueue requeues the Workload and unsuspends the same
  Job when it fits again, and training resumes from that checkpoint. Kueue resets ``Evicted`` only
  when it reserves quota again, so the phase holds while the Workload waits.
- ``Admitted=True`` (or ``QuotaReserved=True``) on a Job still suspended: admitted, its pods are
  starting (**Pending**, reason ``Admitted``).
- otherwise **Queued**, with Kueue's own word on why (``QuotaReserved=False``: "couldn't assign
  flavors ... insufficient quota"), or, with no Workload yet, what to check.

The user's ``spec.suspend`` is **Suspended** whatever Kueue says, and becomes the Workload's
``spec.active: false``: Kueue evicts it and keeps it out of the queue until the operator activates
it again on resume. A Workload deactivated by someone else (an admin, Kueue's own
``maximumExecutionTimeSeconds``) is left so and reported as Suspended, reason ``Deactivated``.
Where the operator cannot read Workloads (Kueue's API not served), the resource's own record
decides: a Job that had run and is suspended again was preempted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmfab.api.common import Phase
from llmfab.operator.builders.common import Manifest
from llmfab.operator.builders.kueue import SUSPENDED_BY, workload_active_patch

SUSPEND_WORDS = "pods deleted, checkpoints kept"


@dataclass(frozen=True)
class Waiting:
    """The phase of a resource whose current stage is a suspended Kueue-managed Job."""

    phase: Phase
    reason: str
    message: str


def _condition(workload: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in (workload.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def _true(workload: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    c = _condition(workload, ctype)
    return c if c is not None and c.get("status") == "True" else None


def is_active(workload: dict[str, Any]) -> bool:
    return (workload.get("spec") or {}).get("active", True) is not False


def deactivated_by_us(workload: dict[str, Any]) -> bool:
    return SUSPENDED_BY in ((workload.get("metadata") or {}).get("annotations") or {})


def workload_name(workload: dict[str, Any]) -> str:
    meta = workload.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}".lstrip("/")


def active_patch(workload: dict[str, Any] | None, suspend: bool) -> Manifest | None:
    """``spec.suspend`` as the Workload's ``spec.active``; a Workload someone else deactivated is
    not activated by a resume (that would undo an admin or Kueue's execution-time limit)."""
    if workload is None:
        return None
    if suspend and is_active(workload):
        return workload_active_patch(workload, active=False)
    if not suspend and not is_active(workload) and deactivated_by_us(workload):
        return workload_active_patch(workload, active=True)
    return None


def suspended_message(stage: str, workload: dict[str, Any] | None, job_name: str) -> str:
    if workload is None:
        return (f"{stage}: suspended (spec.suspend); Kueue has no Workload for Job {job_name} yet, and the "
                "operator deactivates it once there is one")
    return (f"{stage}: suspended (spec.suspend): Kueue Workload {workload_name(workload)} deactivated "
            f"(spec.active: false); {SUSPEND_WORDS}")


def waiting(stage: str, queue: str, job: dict[str, Any], workload: dict[str, Any] | None,
            before: str | None, workloads_readable: bool) -> Waiting:
    """Why a Kueue-managed Job of ``stage`` is suspended (the user's ``spec.suspend`` aside):
    ``before`` is the stage's state in ``status.stages`` as the operator last wrote it."""
    job_name = (job.get("metadata") or {}).get("name", "")
    where = f"Kueue LocalQueue {queue}"
    if workload is None:
        if before in ("Running", "Preempted"):
            return Waiting(Phase.PREEMPTED, "Preempted", f"{stage}: suspended by Kueue after it ran; {SUSPEND_WORDS}; "
                           f"waiting in {where} to be admitted again")
        why = ("Kueue has made no Workload for it yet: is Kueue installed, and does the LocalQueue exist "
               "in this namespace?") if workloads_readable else "the operator cannot read Kueue's Workloads here"
        return Waiting(Phase.QUEUED, "Queued", f"{stage}: Job {job_name} waits in {where}; {why}")
    name = workload_name(workload)
    if not is_active(workload) and not deactivated_by_us(workload):
        stop = _condition(workload, "Evicted") or {}
        detail = f" ({stop.get('reason')}: {stop.get('message')})" if stop.get("reason") else ""
        namespace, _, short = name.partition("/")
        return Waiting(Phase.SUSPENDED, "Deactivated",
                       f"{stage}: Kueue Workload {name} is deactivated{detail}; Kueue does not queue it again "
                       f"until `kubectl patch workloads.kueue.x-k8s.io -n {namespace} {short} "
                       "--type merge -p '{\"spec\":{\"active\":true}}'`")
    evicted = _true(workload, "Evicted")
    if evicted is not None and evicted.get("reason") != "InactiveWorkload":
        reason = evicted.get("reason") or "Preempted"
        return Waiting(Phase.PREEMPTED, reason,
                       f"{stage}: evicted by Kueue ({evicted.get('message') or reason}); {SUSPEND_WORDS}; "
                       f"waiting in {where} to be admitted again")
    admitted = _true(workload, "Admitted") or _true(workload, "QuotaReserved")
    if admitted is not None:
        cluster_queue = ((workload.get("status") or {}).get("admission") or {}).get("clusterQueue")
        by = f"Kueue ClusterQueue {cluster_queue}" if cluster_queue else "Kueue"
        return Waiting(Phase.PENDING, "Admitted", f"{stage}: admitted by {by}; starting its pods")
    pending = _condition(workload, "QuotaReserved") or _condition(workload, "Admitted") or {}
    why = f": {pending['message']}" if pending.get("message") else ""
    return Waiting(Phase.QUEUED, "Queued", f"{stage}: waiting in {where} (Workload {name}){why}")
