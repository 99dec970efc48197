"""Property: whatever Jobs, pods and clean-up Job the cluster shows, the deletion decision never
starts the clean-up while a workload or an unfinished pod of the resource is left, never releases
the finalizer without this resource's own clean-up having succeeded, and always says what it
waits for (llmfab/operator/deletion.py)."""

from __future__ import annotations

import datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from llmfab.operator.deletion import FINISHED, decide_deletion

UID = "uid-now"
NOW = datetime.datetime(2026, 12, 7, 1, 0, 0, tzinfo=datetime.UTC)
PHASES = ["Pending", "Running", "Succeeded", "Failed", "Unknown", None]


@st.composite
def stamps(draw: Any) -> str | None:
    seconds = draw(st.one_of(st.none(), st.integers(-10_000, 10_000)))
    if seconds is None:
        return None
    return (NOW + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


@st.composite
def objects(draw: Any, kind: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": draw(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))}
    if (when := draw(stamps())) is not None:
        meta["deletionTimestamp"] = when
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": meta}
    if kind == "Pod":
        phase = draw(st.sampled_from(PHASES))
        obj["status"] = {} if phase is None else {"phase": phase}
    return obj


@st.composite
def cleanup_jobs(draw: Any) -> dict[str, Any] | None:
    if draw(st.booleans()):
        return None
    conditions = draw(st.lists(st.sampled_from([{"type": "Complete", "status": "True"},
                                                 {"type": "Failed", "status": "True", "reason": "X", "message": "m"},
                                                 {"type": "Complete", "status": "False"}]), max_size=2))
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "tiny-cleanup"},
           "spec": {"suspend": draw(st.booleans())}, "status": {"conditions": conditions}}
    uid = draw(st.sampled_from([UID, "uid-earlier", None]))
    if uid is not None:
        job["metadata"]["annotations"] = {"llmfab.dev/owner-uid": uid}
    return job


@given(st.lists(objects("Job"), max_size=4), st.lists(objects("Pod"), max_size=6), cleanup_jobs())
def test_the_clean_up_never_races_a_live_pod_and_the_finalizer_waits_for_it(
    workloads: list[dict[str, Any]], pods: list[dict[str, Any]], cleanup: dict[str, Any] | None
) -> None:
    step = decide_deletion(UID, workloads, pods, cleanup, NOW)
    live = [p for p in pods if (p.get("status") or {}).get("phase") not in FINISHED]
    if step.create_cleanup:
        assert cleanup is None and not workloads and not live
    if step.done:
        assert cleanup is not None and cleanup["metadata"]["annotations"]["llmfab.dev/owner-uid"] == UID
        assert cleanup in step.remove_cleanup
    assert sum(map(bool, (step.waiting, step.failed, step.done))) == 1
    if cleanup is None:
        assert step.delete == [w for w in workloads if not w["metadata"].get("deletionTimestamp")]
        assert set(step.stuck) <= {p["metadata"]["name"] for p in live}
    else:
        assert step.delete == [] and not step.create_cleanup
    if step.waiting and (workloads or live) and cleanup is None:  # names at most 3 of each, then a count
        assert step.waiting.count(", and ") <= 3
