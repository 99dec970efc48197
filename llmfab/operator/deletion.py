"""``spec.deletionPolicy: Delete``, as a pure decision: what to do next for a resource being deleted.

The artifacts of a resource are removed by a clean-up Job (``llmfab delete``; the operator does not
mount the volume). That Job must not start while anything of the resource can still write there:
a trainer writes its next checkpoint (and one more on SIGTERM, within its grace period) into
``runs/<name>/checkpoints/``, and an InferenceService's pods write ``feedback.sqlite``. A clean-up
that raced them would leave a ``runs/<name>/`` behind, from which a later TrainingRun of the same
name would resume (issue 19, item 7). So, as Kubeflow Trainer and KubeRay tear down a job before
they report it gone, deletion goes in steps, each re-decided from what the cluster shows (so an
operator restarted mid-way picks up where it was, creating nothing twice):

1. every workload of the resource (its stage Jobs of any revision, a RayJob, the serving
   Deployment; not the clean-up Job) is deleted with ``propagationPolicy: Foreground``: the API
   server keeps the Job until its pods are gone, and each pod gets SIGTERM and its grace period;
2. the handler retries (``kopf.TemporaryError``) while a workload object or a pod that has not
   finished (labels ``app.kubernetes.io/instance`` and ``llmfab.dev/kind``) remains, and says in the
   resource's ``status.message`` and an event which ones it waits for;
3. only then is the clean-up Job created, and the finalizer goes once it has succeeded.

A pod that is still there a while after its grace period ran out (its node is gone or its kubelet
is stuck) is not waited for in silence, but not skipped either: a writer that may still run is
exactly what the wait is for. It is reported (Warning ``PodsStuckTerminating``, naming the pods
and the fix), and deletion continues once someone who knows the node is gone force-deletes them.

What the wait cannot see: a writer that is no pod of the resource (``llmfab up`` on a machine
that mounts the same volume, a pod someone started by hand). ``llmfab delete`` cannot see pods
either (the clean-up pod's ServiceAccount may not read them, and should not), so it does not refuse;
it renames the directory away before removing it, so a file such a writer holds open goes with the
doomed copy, and the trainer's checkpoint save, the one writer that would open a path anew and bring
``checkpoints/`` back, refuses once its directory is gone (training/components/checkpoint.py). A writer of
another kind that opens a new path there after the clean-up can still recreate the directory.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from llmfab.operator.builders.cleanup import CLEANUP_COMPONENT, OWNER_UID_ANNOTATION
from llmfab.operator.builders.common import KIND_LABEL
from llmfab.operator.reconcile import job_state

STUCK_AFTER_SECONDS = 60
"""How long past the end of its grace period (its ``deletionTimestamp``) a pod may still be there
before it is reported as stuck: a kubelet normally removes it within seconds."""
FINISHED = ("Succeeded", "Failed")  # a pod in these phases runs nothing and never will again


@dataclass
class DeletionStep:
    delete: list[dict[str, Any]] = field(default_factory=list)  # workloads to delete (Foreground)
    create_cleanup: bool = False
    remove_cleanup: list[dict[str, Any]] = field(default_factory=list)  # clean-up Jobs to delete
    waiting: str | None = None  # retry later; the message says what for
    stuck: list[str] = field(default_factory=list)  # pods terminating for too long
    failed: str | None = None  # the clean-up Job failed
    done: bool = False  # the artifacts are gone: the finalizer may go


def is_cleanup(obj: dict[str, Any]) -> bool:
    return (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == CLEANUP_COMPONENT


def selector(kind: str, name: str) -> dict[str, str]:
    """The labels every child (and every pod) of a resource carries."""
    return {"app.kubernetes.io/instance": name, KIND_LABEL: kind.lower()}


def decide_deletion(
    uid: str,
    workloads: list[dict[str, Any]],
    pods: list[dict[str, Any]],
    cleanup: dict[str, Any] | None,
    now: datetime.datetime,
) -> DeletionStep:
    """The next step of deleting one resource (uid ``uid``) with ``deletionPolicy: Delete``.

    ``workloads``: its Jobs, RayJobs and Deployment (the clean-up Job excluded); ``pods``: its pods
    (clean-up pods excluded); ``cleanup``: the clean-up Job if one exists.
    """
    step = DeletionStep()
    if cleanup is not None and (cleanup["metadata"].get("annotations") or {}).get(OWNER_UID_ANNOTATION) != uid:
        # Left by an earlier resource of the same name: its verdict says nothing about this one.
        if not cleanup["metadata"].get("deletionTimestamp"):
            step.remove_cleanup.append(cleanup)
        step.waiting = f"waiting for the clean-up Job {cleanup['metadata']['name']} of an earlier resource to go"
        return step
    if cleanup is not None:
        # Created only once nothing was left to wait for; the resource being deleted, nothing
        # creates its workloads again, so the clean-up's own state decides.
        state = job_state(cleanup)
        if state.state == "failed":
            step.failed = f"artifact clean-up job failed: {state.message}"
        elif state.state == "succeeded":
            step.remove_cleanup.append(cleanup)
            step.done = True
        else:
            step.waiting = "waiting for the artifact clean-up job"
        return step
    step.delete = [w for w in workloads if not w["metadata"].get("deletionTimestamp")]
    live = [p for p in pods if (p.get("status") or {}).get("phase") not in FINISHED]
    if not workloads and not live:
        step.create_cleanup = True
        step.waiting = "waiting for the artifact clean-up job"
        return step
    stuck = [p for p in live if _stuck(p, now)]
    step.stuck = [p["metadata"]["name"] for p in stuck]
    parts = []
    if live:
        parts.append(f"{len(live)} pod(s) to stop ({_names(live)})")
    if workloads:
        parts.append(f"{len(workloads)} workload(s) to go ({_names(workloads, with_kind=True)})")
    step.waiting = "deleting: waiting for " + " and ".join(parts) + " before removing the artifacts"
    if step.stuck:
        step.waiting += (
            f"; still terminating {STUCK_AFTER_SECONDS}s after their grace period: {_names(stuck)} "
            "(if their node is down, `kubectl delete pod NAME --grace-period=0 --force` once it cannot run them)"
        )
    return step


def _stuck(pod: dict[str, Any], now: datetime.datetime) -> bool:
    when = pod["metadata"].get("deletionTimestamp")
    if not when:
        return False
    end = datetime.datetime.fromisoformat(when.replace("Z", "+00:00"))
    return (now - end).total_seconds() > STUCK_AFTER_SECONDS


def _names(objs: list[dict[str, Any]], with_kind: bool = False, shown: int = 3) -> str:
    names = [f"{o['kind']}/{o['metadata']['name']}" if with_kind else o["metadata"]["name"] for o in objs]
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
