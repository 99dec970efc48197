"""Property: whatever children a refused resource has, the decision creates and patches nothing,
deletes exactly its Deployment and its Jobs/RayJobs that may still run pods (never a ConfigMap,
never one already being deleted or finished), names each in one Warning event, and once they are
gone decides nothing more (llmfab/operator/reconcile.py, ``_stop``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from llmfab.operator.reconcile import Observed, decide, job_state
from llmfab.operator.settings import OperatorSettings
from tests.cluster.test_builders import resource

OPEN_APP = resource("InferenceService", {"model": {"path": "/m"}, "quantization": {"method": "none"},
                                         "eval": {"enabled": False}, "feedback": {"enabled": True}})
OUTSIDE = resource("Dataset", {"sources": [{"path": "a"}], "pod": {"image": "evil.example/x:1"}})
POLICY = OperatorSettings(allowed_images=["ghcr.io/llmfab/*"])
API = {"Job": "batch/v1", "RayJob": "ray.io/v1", "ConfigMap": "v1", "Deployment": "apps/v1"}


@st.composite
def child(draw: Any, kind: str, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ml"}
    if draw(st.booleans()):
        meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    status: dict[str, Any] = {}
    if kind == "Job":
        status["conditions"] = draw(st.lists(st.sampled_from([{"type": "Complete", "status": "True"},
                                                              {"type": "Failed", "status": "True"}]), max_size=1))
        status["active"] = draw(st.integers(0, 2))
    elif kind == "RayJob":
        status = {"jobDeploymentStatus": draw(st.sampled_from(["", "Running", "Complete", "Failed", "Suspended"])),
                  "jobStatus": draw(st.sampled_from(["SUCCEEDED", "FAILED", "RUNNING"]))}
    return {"apiVersion": API[kind], "kind": kind, "metadata": meta, "status": status}


@st.composite
def observed(draw: Any) -> Observed:
    stages = draw(st.lists(st.sampled_from(["data", "eval", "quantize"]), unique=True, max_size=3))
    jobs = {s: draw(child(draw(st.sampled_from(["Job", "RayJob"])), f"x-{s}-cur")) for s in stages}
    stale = [draw(child(k, f"x-{k.lower()}-{i}")) for i, k in enumerate(draw(st.lists(
        st.sampled_from(["Job", "RayJob", "ConfigMap"]), max_size=4)))]
    deployment = draw(st.one_of(st.none(), child("Deployment", "x")))
    return Observed(status={"phase": "Running"}, jobs=jobs, stale=stale, deployment=deployment)


def may_run(w: dict[str, Any]) -> bool:
    if w["kind"] == "ConfigMap" or w["metadata"].get("deletionTimestamp"):
        return False
    return w["kind"] == "Deployment" or job_state(w).state not in ("succeeded", "failed")


@given(observed(), st.booleans())
def test_a_refused_resource_deletes_exactly_what_may_still_run_and_says_so_once(obs: Observed, open_app: bool) -> None:
    res, settings = (OPEN_APP, OperatorSettings()) if open_app else (OUTSIDE, POLICY)
    d = decide(res, obs, settings)
    assert d.apply == [] and d.patch == [] and d.status["phase"] == "Failed"
    children = [*obs.jobs.values(), *obs.stale, *([obs.deployment] if obs.deployment else [])]
    assert sorted(w["metadata"]["name"] for w in d.delete) == sorted(
        w["metadata"]["name"] for w in children if may_run(w))
    stopped = [e for e in d.events_if_deleted if e[1] == "Stopped"]
    assert len(stopped) == (1 if d.delete else 0)
    for w in d.delete:
        assert f"{w['kind']}/{w['metadata']['name']}" in stopped[0][2] and stopped[0][0] == "Warning"
    gone = {id(w) for w in d.delete}
    after = Observed(status={k: v for k, v in d.status.items() if v is not None},
                     jobs={s: j for s, j in obs.jobs.items() if id(j) not in gone},
                     stale=[w for w in obs.stale if id(w) not in gone],
                     deployment=None if obs.deployment is None or id(obs.deployment) in gone else obs.deployment)
    again = decide(res, after, settings)
    assert again.delete == [] and again.events == again.events_if_deleted == [] and again.status == {}
