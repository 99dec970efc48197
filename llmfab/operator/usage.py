"""A resource's ``status.usage`` on the cluster, from the pods the operator sees: a pure function of
(what status holds, the pods listed now, the time, the prices).

What a pod counts (:func:`pod_entry`): its runtime from ``status.startTime`` (the kubelet accepted
it: its GPUs are held from then) to its containers' termination (``finishedAt``), or to now while
it runs; times its ``nvidia.com/gpu`` (GPU seconds) and its CPU requests (CPU seconds, *reserved*
and not used: nothing on the API server says what a container used). Rank 0's pod (index 0 of an
Indexed Job) or a server replica starts a run: an attempt, whose runtime is the wall time.

Pods of earlier attempts disappear (a Job deletes its pods on suspension and preemption, failed
pods are replaced, an old revision's Jobs are deleted), so ``status.usage.pods`` keeps one entry
per pod listed at the last look, counted in the totals. A pod missing from a look is marked
``gone`` with its last figures; at the next look its entry moves into ``gonePods`` and is dropped.
The second look is there for the workload's own report: the pod's first process writes its GPUs'
NVML energy into its entry (``gpuEnergyJoules``, ``llmfab.gpu_energy.report_pod_energy``) just
before it exits, and the look after the pod vanished is the first whose status surely holds it.
Every write is computed from one snapshot of status, so a look that repeats a fold (kopf handed it
an older body) writes the same sums again: nothing is counted twice.

A pod that vanished while running (deleted on suspension, preemption) counts to the last look that
saw it, an undercount of at most one look: the operator writes at once whenever a pod is being
deleted, and otherwise at most every ``minInterval`` seconds of runtime (each write is an update
of the resource every watcher receives).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from llmfab.api.common import PodUsage, Usage, UsageTotals
from llmfab.operator.builders.common import GPU, STAGE_LABEL
from llmfab.usage import Prices, add, priced, run_totals

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
FINISHED = ("Succeeded", "Failed")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _resources(container: dict[str, Any], name: str) -> float | None:
    """A container's request of ``name``; its limit where only that is set (the API server then
    defaults the request to it)."""
    resources = container.get("resources") or {}
    value = (resources.get("requests") or {}).get(name, (resources.get("limits") or {}).get(name))
    return None if value is None else float(parse_quantity(str(value)))


def pod_entry(pod: Mapping[str, Any], now: datetime) -> PodUsage | None:
    """What ``pod`` has used by ``now``; None for a pod no kubelet has started."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    start = _time(status.get("startTime"))
    if start is None:
        return None
    finished = [_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
                for cs in status.get("containerStatuses") or []]
    ended = status.get("phase") in FINISHED or (bool(finished) and all(finished))
    end = now
    if ended:  # its containers' end; a pod failed without one (evicted, its node lost): its last transition
        transitions = [_time(c.get("lastTransitionTime")) for c in status.get("conditions") or []]
        end = max((t for t in finished if t), default=None) or max((t for t in transitions if t), default=start)
    containers = spec.get("containers") or []
    gpus = sum(int(_resources(c, GPU) or 0) for c in containers)
    cpus = [c for c in (_resources(c, "cpu") for c in containers) if c is not None]
    labels = meta.get("labels") or {}
    index = (meta.get("annotations") or {}).get(COMPLETION_INDEX)
    return PodUsage(
        stage=labels.get(STAGE_LABEL) or labels.get("app.kubernetes.io/component"),
        start_time=status["startTime"],
        seconds=max(0.0, (end - start).total_seconds()),
        gpus=gpus,
        cpus=sum(cpus) if cpus else None,
        attempt=index in (None, "0"),
        ended=ended,
    )


def entry_totals(entry: PodUsage) -> UsageTotals:
    cpu = entry.cpus * entry.seconds if entry.cpus is not None else None
    return run_totals(entry.seconds if entry.attempt else 0.0, cpu, entry.gpus * entry.seconds,
                      entry.gpu_energy_joules, attempts=1 if entry.attempt else 0)


def account(stored: Mapping[str, Any] | None, pods: list[dict[str, Any]], now: datetime, prices: Prices,
            min_interval: float = 60.0) -> dict[str, Any] | None:
    """The merge patch of ``status.usage`` (``stored``) after a look at ``pods``, or None when
    nothing changed enough to write. Never writes a pod's ``gpuEnergyJoules`` (the workload's)."""
    old = Usage.model_validate(stored or {})
    gone = old.gone_pods or UsageTotals()
    entries: dict[str, PodUsage] = {}
    dropped: list[str] = []
    listed: set[str] = set()
    for pod in pods:
        name = pod["metadata"]["name"]
        entry = pod_entry(pod, now)
        if entry is None:
            continue
        listed.add(name)
        before = old.pods.get(name)
        entries[name] = entry.model_copy(update={"gpu_energy_joules": before.gpu_energy_joules if before else None})
    for name, before in old.pods.items():
        if name in listed:
            continue
        if before.gone or before.start_time is None:  # second look without it (or a report of a pod never seen)
            gone = add(gone, entry_totals(before))
            dropped.append(name)
        else:
            entries[name] = before.model_copy(update={"ended": True, "gone": True})
    usage = priced(add(gone, *(entry_totals(e) for e in entries.values())), prices, "reserved")
    usage.pods, usage.gone_pods = entries, gone if gone != UsageTotals() else None
    deleting = any(p["metadata"].get("deletionTimestamp") and not entries[p["metadata"]["name"]].ended
                   for p in pods if p["metadata"]["name"] in listed)
    if stored and not dropped and not deleting and not _changed(old, usage, min_interval):
        return None
    patch: dict[str, Any] = usage.model_dump(mode="json", by_alias=True, exclude={"pods"})  # nulls delete
    patch["pods"] = {name: e.model_dump(mode="json", by_alias=True, exclude={"gpu_energy_joules"})
                     for name, e in entries.items()} | dict.fromkeys(dropped)
    return patch


def _changed(old: Usage, new: Usage, min_interval: float) -> bool:
    """Whether a pod came, ended or went, the prices changed, or a pod ran ``min_interval`` more."""
    if set(old.pods) != set(new.pods) or (old.currency, old.cost_inputs) != (new.currency, new.cost_inputs):
        return True
    for name, entry in new.pods.items():
        before = old.pods[name]
        same = before.model_dump(exclude={"seconds", "gpu_energy_joules"}) == entry.model_dump(
            exclude={"seconds", "gpu_energy_joules"})
        if not same or abs(entry.seconds - before.seconds) >= min_interval:
            return True
    return False
