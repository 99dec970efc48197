"""A stand-in for kube-controller-manager's Job controller, and for the kubelet's pod status.

What it does follows kubernetes.io/docs/concepts/workloads/controllers/job/:

- a Job that is not ``suspend``-ed gets ``min(parallelism, completions)`` Pods at once, each with
  the Job's pod template, the labels ``job-name``, ``controller-uid`` and their
  ``batch.kubernetes.io/`` forms, and a controller ownerReference to the Job (so deleting the Job
  with ``propagationPolicy: Background`` deletes them). Indexed Jobs ("Completion mode") name pods
  ``<job>-<index>-<suffix>``, annotate and label them with
  ``batch.kubernetes.io/job-completion-index``, set ``hostname: <job>-<index>`` and the
  ``JOB_COMPLETION_INDEX`` environment variable; NonIndexed pods are ``<job>-<suffix>``.
- ``status``: ``startTime`` when pods are first created; ``active``, ``succeeded`` and ``failed``
  counts (omitted when zero, as the API's ``omitempty`` does), ``ready``, ``completedIndexes`` for
  Indexed Jobs; a failed pod is replaced while ``failed <= backoffLimit``.
- "Terminal Job conditions" (1.31+): on success ``SuccessCriteriaMet`` then ``Complete`` (reason
  ``CompletionsReached``) with ``completionTime``; past the backoff limit ``FailureTarget`` then
  ``Failed`` (reason ``BackoffLimitExceeded``) and the remaining active pods are deleted. Pods here
  terminate at once, so both conditions of a pair appear in the same update.

- "Suspending a Job": setting ``spec.suspend`` on a running Job deletes its active pods and adds
  the condition ``Suspended=True`` (reason ``JobSuspended``); clearing it sets ``Suspended=False``
  (reason ``JobResumed``), resets ``startTime`` and creates the missing pods again.
- "Pod failure policy": the first rule matching a failed pod decides (``onExitCodes`` on the
  terminated container, ``In``/``NotIn``; ``onPodConditions`` by type and status): ``FailJob``
  fails the Job at once (reason ``PodFailurePolicy``), ``Ignore`` does not count the failure,
  ``FailIndex`` fails the pod's index, ``Count`` counts it as usual.
- "Backoff limit per index" (Indexed Jobs): an index whose failures exceed ``backoffLimitPerIndex``
  is failed (``status.failedIndexes``) and not retried; more failed indexes than
  ``maxFailedIndexes`` fail the Job (reason ``MaxFailedIndexesExceeded``), and a Job whose every
  index has succeeded or failed with some failed ends ``Failed`` (reason ``FailedIndexes``). With a
  per-index limit, ``backoffLimit`` defaults to unlimited.

- A pod being deleted (``deletionTimestamp``, still running) counts in ``terminating``, not
  ``active``; a Job being deleted gets no new pods.

Not emulated: ``activeDeadlineSeconds``, ``successPolicy``, ``ttlSecondsAfterFinished``, the exponential back-off delay before a
replacement pod, and in-place container restarts under ``restartPolicy: OnFailure`` (a ``Failed``
pod counts as a failure either way).
"""

from __future__ import annotations

import copy
from typing import Any

from .objectstore import ObjectStore, now, random_suffix
from .watches import WatchEvent

JSON = dict[str, Any]
INDEX = "batch.kubernetes.io/job-completion-index"
FINISHED = ("Succeeded", "Failed")


def pod_status(pod: JSON, phase: str, exit_code: int | None = None, started: str | None = None,
               finished: str | None = None) -> JSON:
    """What the kubelet would report for ``pod`` in ``phase`` (Pending, Running, Succeeded, Failed);
    ``started`` (the pod's ``startTime``) and ``finished`` (its container's ``finishedAt``) default
    to now."""
    status = copy.deepcopy(pod.get("status") or {})
    status["phase"] = phase
    ready = "True" if phase == "Running" else "False"
    if phase != "Pending":
        status.setdefault("startTime", started or now())
        status.setdefault("podIP", "10.42.0.10")
    status["conditions"] = [
        {"type": "Ready", "status": ready, "lastProbeTime": None, "lastTransitionTime": now()},
        {"type": "ContainersReady", "status": ready, "lastProbeTime": None, "lastTransitionTime": now()},
    ]
    if phase == "Running":
        state: JSON = {"running": {"startedAt": now()}}
    elif phase in FINISHED:
        code = exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
        reason = "Completed" if code == 0 else "Error"
        state = {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": status["startTime"],
                "finishedAt": finished or now(),
            }
        }
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    status["containerStatuses"] = [
        {
            "name": c.get("name"),
            "ready": phase == "Running",
            "restartCount": 0,
            "state": state,
            "image": c.get("image"),
        }
        for c in pod.get("spec", {}).get("containers", [])
    ]
    return status


class JobController:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def __call__(self, ev: WatchEvent) -> None:
        if ev.key == ("batch", "jobs") and ev.type == "ADDED":
            self._start(ev.obj)
        elif ev.key == ("batch", "jobs") and ev.type == "MODIFIED":
            self._suspend_or_resume(ev.obj)
        elif ev.key == ("", "pods") and ev.type in ("MODIFIED", "DELETED"):
            ref = next(
                (r for r in ev.obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None
            )
            if ref is not None and ref.get("kind") == "Job":
                jobs = self.store.types[("batch", "jobs")]
                job = self.store.find(jobs, ev.obj["metadata"]["namespace"], ref["name"])
                if job is not None and job["metadata"]["uid"] == ref["uid"]:
                    self._sync(job)

    def _pods(self, job: JSON) -> list[JSON]:
        uid = job["metadata"]["uid"]
        return [
            pod
            for _, pod in self.store.live_objects(self.store.types[("", "pods")])
            if any(r.get("uid") == uid for r in pod["metadata"].get("ownerReferences") or [])
        ]

    def _create_pod(self, job: JSON, index: int | None) -> None:
        template = copy.deepcopy(job["spec"].get("template") or {})
        meta = template.get("metadata") or {}
        name = job["metadata"]["name"]
        labels = dict(meta.get("labels") or {})
        annotations = dict(meta.get("annotations") or {})
        spec = template.get("spec") or {}
        if index is not None:
            labels[INDEX] = annotations[INDEX] = str(index)
            spec.setdefault("hostname", f"{name}-{index}")
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                env = [e for e in container.get("env") or [] if e.get("name") != "JOB_COMPLETION_INDEX"]
                field = f"metadata.annotations['{INDEX}']"
                env.append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": field}}})
                container["env"] = env
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{index}-{random_suffix()}"
                if index is not None
                else f"{name}-{random_suffix()}",
                "namespace": job["metadata"]["namespace"],
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
        }
        if not annotations:
            del pod["metadata"]["annotations"]
        self.store.create(self.store.types[("", "pods")], job["metadata"]["namespace"], pod)

    def _write_status(self, job: JSON, status: JSON) -> None:
        if status != job.get("status"):
            body = {**job, "status": status}
            self.store.update(
                self.store.types[("batch", "jobs")],
                job["metadata"]["namespace"],
                job["metadata"]["name"],
                body,
                subresource="status",
            )

    def _start(self, job: JSON) -> None:
        if job["spec"].get("suspend"):
            condition = {
                "type": "Suspended",
                "status": "True",
                "reason": "JobSuspended",
                "message": "Job suspended",
            }
            self._write_status(
                job, {"conditions": [{**condition, "lastProbeTime": now(), "lastTransitionTime": now()}]}
            )
            return
        spec = job["spec"]
        completions = spec.get("completions")
        count = min(spec["parallelism"], completions) if completions is not None else spec["parallelism"]
        indexed = spec.get("completionMode") == "Indexed"
        for i in range(count):
            self._create_pod(job, i if indexed else None)
        self._write_status(
            job,
            {
                "startTime": now(),
                "active": count,
                "ready": 0,
                "terminating": 0,
                "uncountedTerminatedPods": {},
            },
        )

    def _suspend_or_resume(self, job: JSON) -> None:
        status = copy.deepcopy(job.get("status") or {})
        if _terminal(status):
            return
        suspended = _condition(status, "Suspended")
        pods_rt = self.store.types[("", "pods")]
        if job["spec"].get("suspend") and not suspended:
            for pod in self._pods(job):
                if pod["status"].get("phase") not in FINISHED:
                    self.store.delete(pods_rt, pod["metadata"]["namespace"], pod["metadata"]["name"])
            status.pop("active", None)
            status["ready"] = 0
            status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "Suspended"] + [
                {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended",
                 "lastProbeTime": now(), "lastTransitionTime": now()}]
            self._write_status(job, status)
        elif not job["spec"].get("suspend") and suspended:
            status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "Suspended"] + [
                {"type": "Suspended", "status": "False", "reason": "JobResumed", "message": "Job resumed",
                 "lastProbeTime": now(), "lastTransitionTime": now()}]
            status["startTime"] = now()
            self._write_status(job, status)
            fresh = self.store.find(self.store.types[("batch", "jobs")], job["metadata"]["namespace"],
                                    job["metadata"]["name"])
            if fresh is not None:
                self._sync(fresh)

    def _sync(self, job: JSON) -> None:
        status = copy.deepcopy(job.get("status") or {})
        if _terminal(status):
            return
        spec = job["spec"]
        indexed = spec.get("completionMode") == "Indexed"
        pods = self._pods(job)
        running = [p for p in pods if p["status"].get("phase") not in FINISHED]
        active = [p for p in running if not p["metadata"].get("deletionTimestamp")]
        terminating = [p for p in running if p["metadata"].get("deletionTimestamp")]
        succeeded = [p for p in pods if p["status"].get("phase") == "Succeeded"]
        failed_pods = [p for p in pods if p["status"].get("phase") == "Failed"]
        actions = [_policy_action(spec.get("podFailurePolicy"), p) for p in failed_pods]
        failed = [p for p, a in zip(failed_pods, actions, strict=True) if a != "Ignore"]
        per_index = spec.get("backoffLimitPerIndex") if indexed else None
        failed_indexes: list[int] = []
        if per_index is not None:
            counts: dict[int, int] = {}
            for pod, action in zip(failed_pods, actions, strict=True):
                if action == "Ignore":
                    continue
                i = int(pod["metadata"]["annotations"][INDEX])
                counts[i] = counts.get(i, 0) + 1
                if action == "FailIndex":
                    counts[i] = per_index + 1
            failed_indexes = sorted(i for i, n in counts.items() if n > per_index)
            if failed_indexes:
                status["failedIndexes"] = _ranges(failed_indexes)
        done_indexes = (
            sorted({int(p["metadata"]["annotations"][INDEX]) for p in succeeded}) if indexed else []
        )
        completions = spec.get("completions")
        if indexed:
            complete = len(done_indexes) >= (completions or 0)
        elif completions is not None:
            complete = len(succeeded) >= completions
        else:
            complete = bool(succeeded) and not active
        default_limit = 2**31 - 1 if per_index is not None else 6
        failed_out = len(failed) > spec.get("backoffLimit", default_limit)
        reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        if "FailJob" in actions:
            failed_out = True
            reason, message = "PodFailurePolicy", "Container matched a FailJob rule of the pod failure policy"
        elif per_index is not None and len(failed_indexes) > spec.get("maxFailedIndexes", 2**31 - 1):
            failed_out = True
            reason, message = "MaxFailedIndexesExceeded", "Job has exceeded the specified maximal number of failed indexes"
        elif per_index is not None and failed_indexes and not complete:
            finished = set(done_indexes) | set(failed_indexes)
            if len(finished) >= (spec.get("completions") or 0):
                failed_out = True
                reason, message = "FailedIndexes", "Job has failed indexes"
        if complete or failed_out:
            pods_rt = self.store.types[("", "pods")]
            for pod in active:
                self.store.delete(pods_rt, pod["metadata"]["namespace"], pod["metadata"]["name"])
            active = []
        elif not job["spec"].get("suspend") and not job["metadata"].get("deletionTimestamp"):
            active += self._replace_pods(job, active, succeeded, done_indexes)
        for field, pods_in in (("active", active), ("succeeded", succeeded), ("failed", failed)):
            if pods_in:
                status[field] = len(pods_in)
            else:
                status.pop(field, None)
        status["ready"] = sum(1 for p in active if p["status"].get("phase") == "Running")
        status["terminating"] = len(terminating)
        if indexed:
            status["completedIndexes"] = _ranges(done_indexes)
        if complete:
            reason, message = "CompletionsReached", "Reached expected number of succeeded pods"
            status["completionTime"] = now()
            status["conditions"] = [
                *status.get("conditions", []),
                *_conditions(("SuccessCriteriaMet", "Complete"), reason, message),
            ]
        elif failed_out:
            status["conditions"] = [
                *status.get("conditions", []),
                *_conditions(("FailureTarget", "Failed"), reason, message),
            ]
        self._write_status(job, status)

    def _replace_pods(
        self, job: JSON, active: list[JSON], succeeded: list[JSON], done_indexes: list[int]
    ) -> list[JSON]:
        spec = job["spec"]
        before = {p["metadata"]["name"] for p in self._pods(job)}
        if spec.get("completionMode") == "Indexed":
            busy = {int(p["metadata"]["annotations"][INDEX]) for p in active} | set(done_indexes)
            busy |= _index_set(job.get("status", {}).get("failedIndexes"))
            todo = [i for i in range(spec["completions"]) if i not in busy][
                : max(0, spec["parallelism"] - len(active))
            ]
            for i in todo:
                self._create_pod(job, i)
        else:
            remaining = (
                (spec["completions"] - len(succeeded))
                if spec.get("completions") is not None
                else spec["parallelism"]
            )
            for _ in range(max(0, min(spec["parallelism"], remaining) - len(active))):
                self._create_pod(job, None)
        return [p for p in self._pods(job) if p["metadata"]["name"] not in before]


def _conditions(types: tuple[str, ...], reason: str, message: str) -> list[JSON]:
    at = now()
    return [
        {
            "type": t,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastProbeTime": at,
            "lastTransitionTime": at,
        }
        for t in types
    ]


def _ranges(indexes: list[int]) -> str:
    """``completedIndexes`` as the controller writes it: ``1,3-5,7`` (two in a row are ``0,1``)."""
    intervals: list[list[int]] = []
    for i in indexes:
        if intervals and intervals[-1][1] == i - 1:
            intervals[-1][1] = i
        else:
            intervals.append([i, i])
    parts = []
    for first, last in intervals:
        parts.append(str(first) if first == last else f"{first}{',' if last == first + 1 else '-'}{last}")
    return ",".join(parts)


def _terminal(status: JSON) -> bool:
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in status.get("conditions", []))


def _condition(status: JSON, ctype: str) -> bool:
    return any(c["type"] == ctype and c["status"] == "True" for c in status.get("conditions", []))


def _index_set(ranges: str | None) -> set[int]:
    out: set[int] = set()
    for part in (ranges or "").split(","):
        if part:
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _policy_action(policy: JSON | None, pod: JSON) -> str:
    """The action of the first ``podFailurePolicy`` rule that matches a failed pod, else Count."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    for rule in (policy or {}).get("rules") or []:
        codes = rule.get("onExitCodes")
        if codes:
            for cs in statuses:
                code = ((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
                if code is None or code == 0 or codes.get("containerName") not in (None, cs.get("name")):
                    continue
                inside = code in codes.get("values", [])
                if inside == (codes.get("operator", "In") == "In"):
                    return str(rule["action"])
        for pattern in rule.get("onPodConditions") or []:
            for c in pod.get("status", {}).get("conditions") or []:
                if c.get("type") == pattern.get("type") and c.get("status") == pattern.get("status", "True"):
                    return str(rule["action"])
    return "Count"
