"""Where an autoscaled InferenceService stands (``status.scale``), as a pure function of what the
cluster shows: the server Deployment (KEDA sets its ``spec.replicas``) and its pods.

- ``Idle``: the Deployment is at 0 replicas; the next request wakes it.
- ``Waking``: replicas above 0 and none ready. From ``Idle`` this is a wake from zero: it began
  when the first new pod was created (``lastColdStartTime``), the moment KEDA scaled up.
- ``Ready``: at least one replica ready. A wake from zero completes here: ``lastColdStartSeconds``
  runs from its beginning to the first pod's ``Ready`` transition, and ``coldStarts`` counts it.

The times come from the pods' own timestamps, not from when the operator looked (every
``resyncSeconds``), so a wake the operator sees late, or whole (Idle, then Ready), is still
measured from the pod's creation to its readiness.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

IDLE, WAKING, READY = "Idle", "Waking", "Ready"


@dataclass(frozen=True)
class ScaleStep:
    scale: dict[str, Any]  # the new status.scale
    desired: int  # the Deployment's spec.replicas
    ready: int  # its ready replicas
    cold_start_seconds: float | None = None  # a wake from zero completed in this step


def _time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ready_since(pod: dict[str, Any]) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") == "True":
            return str(c.get("lastTransitionTime") or "") or None
    return None


def _earliest(times: list[str], default: str) -> str:
    return min(times, key=_time) if times else default


def next_scale(previous: dict[str, Any] | None, deployment: dict[str, Any] | None, pods: list[dict[str, Any]],
               now: str) -> ScaleStep:
    """``status.scale`` after this look at the cluster (``previous``: the one stored)."""
    spec = (deployment or {}).get("spec") or {}
    desired = int(spec.get("replicas", 1))  # the API server defaults it to 1; not created yet: it will be
    ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    state = READY if ready else IDLE if desired == 0 else WAKING
    scale: dict[str, Any] = {"coldStarts": 0, **(previous or {})}
    was = scale.get("state")
    if state == was:
        return ScaleStep(scale, desired, ready)
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    created = [p["metadata"]["creationTimestamp"] for p in live if p["metadata"].get("creationTimestamp")]
    since, seconds = now, None
    if state == WAKING and was == IDLE:
        since = scale["lastColdStartTime"] = _earliest(created, now)
    elif state == READY:
        since = _earliest([t for p in live if (t := _ready_since(p))], now)
        began = None
        if was == WAKING and scale.get("since") and scale.get("since") == scale.get("lastColdStartTime"):
            began = scale["lastColdStartTime"]  # this waking began at a wake from zero
        elif was == IDLE:  # woke and became ready between two looks
            began = scale["lastColdStartTime"] = _earliest(created, since)
        if began is not None:
            seconds = max(0.0, (_time(since) - _time(began)).total_seconds())
            scale["lastColdStartSeconds"] = seconds
            scale["coldStarts"] = int(scale.get("coldStarts") or 0) + 1
    scale.update(state=state, since=since)
    return ScaleStep(scale, desired, ready, seconds)
