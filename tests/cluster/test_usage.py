"""status.usage on the cluster: what the pods' runtimes and requests imply, over every attempt.

The pure part (``llmfab/operator/usage.py``) on plain pod dicts with known times; then the operator
against the test API server, with pods whose start and end the test reports as their kubelet
would, through a failed-and-retried run, a suspension, and pods that disappear.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from llmfab.operator import metrics
from llmfab.operator.usage import account, pod_entry
from llmfab.usage import Prices
from tests.cluster.kubelet import wait_for
from tests.cluster.operator_runner import FAST, run_operator
from tests.kube.apiserver import KubeAPIServer

T0 = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)
EUR = Prices(currency="EUR", price_per_gpu_hour=2.0)


def rfc(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name: str, start: datetime | None, end: datetime | None = None, phase: str = "Running", gpus: int = 1,
        cpu: str | None = "2", index: str | None = "0", deleting: bool = False) -> dict[str, Any]:
    requests = {"nvidia.com/gpu": str(gpus), **({"cpu": cpu} if cpu else {})}
    meta: dict[str, Any] = {"name": name, "labels": {"llmfab.dev/stage": "train"}}
    if index is not None:
        meta["annotations"] = {"batch.kubernetes.io/job-completion-index": index}
    if deleting:
        meta["deletionTimestamp"] = rfc(T0)
    status: dict[str, Any] = {"phase": phase if start else "Pending"}
    if start:
        status["startTime"] = rfc(start)
    if end:
        status["containerStatuses"] = [{"name": "workload", "state": {"terminated": {
            "exitCode": 0 if phase == "Succeeded" else 1, "startedAt": rfc(start or T0), "finishedAt": rfc(end)}}}]
    return {"metadata": meta, "status": status, "spec": {"containers": [
        {"name": "workload", "resources": {"requests": requests, "limits": {"nvidia.com/gpu": str(gpus)}}}]}}


def merge(target: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    """RFC 7386 merge patch, as the API server applies status patches."""
    for key, value in (patch or {}).items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def look(stored: dict[str, Any], pods: list[dict[str, Any]], at: datetime, prices: Prices = EUR) -> dict[str, Any]:
    return merge(stored, account(stored, pods, at, prices, min_interval=0.001))


# --- the pure part -------------------------------------------------------------------------------


def test_a_pod_counts_from_its_start_to_its_containers_end_times_its_gpus_and_cpu_requests() -> None:
    entry = pod_entry(pod("p", T0, T0 + timedelta(seconds=90), "Succeeded", gpus=2, cpu="500m"), T0 + timedelta(hours=1))
    assert entry is not None and entry.ended
    assert (entry.seconds, entry.gpus, entry.cpus, entry.attempt) == (90.0, 2, 0.5, True)
    running = pod_entry(pod("p", T0, gpus=1), T0 + timedelta(seconds=42))
    assert running is not None and (running.seconds, running.ended) == (42.0, False)
    assert pod_entry(pod("p", None), T0) is None  # no kubelet started it: nothing held yet
    assert pod_entry(pod("p", T0, index="1"), T0) is not None and not pod_entry(pod("p", T0, index="1"), T0).attempt  # type: ignore[union-attr]
    assert pod_entry(pod("p", T0, index=None), T0).attempt  # type: ignore[union-attr]  # a server replica


def test_two_attempts_add_up_and_a_pod_that_is_gone_is_folded_once() -> None:
    failed = pod("run-0-a", T0, T0 + timedelta(seconds=100), "Failed")
    retry = pod("run-0-b", T0 + timedelta(seconds=110), T0 + timedelta(seconds=160), "Succeeded")
    s = look({}, [failed], T0 + timedelta(seconds=105))
    s = look(s, [failed, retry], T0 + timedelta(seconds=200))
    assert (s["attempts"], s["wallSeconds"], s["gpuSeconds"], s["cpuSeconds"]) == (2, 150.0, 150.0, 300.0)
    assert s["cost"] == round(150 / 3600 * 2.0, 4) and s["currency"] == "EUR" and s["cpu"] == "reserved"
    # The failed pod disappears: one look marks it gone, the next folds it; the sums never change.
    s = look(s, [retry], T0 + timedelta(seconds=300))
    assert s["pods"]["run-0-a"]["gone"] and "gonePods" not in s and s["gpuSeconds"] == 150.0
    before = copy.deepcopy(s)
    s = look(s, [retry], T0 + timedelta(seconds=310))
    assert "run-0-a" not in s["pods"] and s["gonePods"]["gpuSeconds"] == 100.0
    assert (s["attempts"], s["gpuSeconds"], s["cpuSeconds"]) == (2, 150.0, 300.0)
    # kopf may hand a look an older body: computed from that snapshot, the write is the same sums.
    again = look(before, [retry], T0 + timedelta(seconds=320))
    assert (again["attempts"], again["gpuSeconds"], again["gonePods"]) == (2, 150.0, s["gonePods"])


def test_a_running_pod_counts_to_now_and_a_vanished_one_to_the_last_look() -> None:
    s = look({}, [pod("run-0-a", T0)], T0 + timedelta(seconds=30))
    assert s["gpuSeconds"] == 30.0 and not s["pods"]["run-0-a"]["ended"]
    s = look(s, [], T0 + timedelta(seconds=45))  # deleted (suspended, preempted) between two looks
    s = look(s, [pod("run-0-b", T0 + timedelta(seconds=60))], T0 + timedelta(seconds=70))
    assert (s["attempts"], s["gpuSeconds"], s["wallSeconds"]) == (2, 40.0, 40.0)


def test_the_workloads_energy_report_is_never_overwritten_and_is_folded_in() -> None:
    s = look({}, [pod("run-0-a", T0, gpus=2)], T0 + timedelta(seconds=60))
    # The pod's workload reports its GPUs' energy just before it exits (llmfab.gpu_energy).
    merge(s, {"pods": {"run-0-a": {"gpuEnergyJoules": 36000.0}}})
    ended = pod("run-0-a", T0, T0 + timedelta(seconds=100), "Succeeded", gpus=2)
    patch = account(s, [ended], T0 + timedelta(seconds=120), EUR, 0.001)
    assert patch is not None and "gpuEnergyJoules" not in patch["pods"]["run-0-a"]
    s = merge(s, patch)
    assert s["gpuEnergyJoules"] == 36000.0 and s["measuredGpuSeconds"] == 200.0
    assert s["energyKwh"] == 0.01 and s["costInputs"]["energy"] == "measured"
    s = look(look(s, [], T0 + timedelta(seconds=130)), [], T0 + timedelta(seconds=140))
    assert s["gonePods"]["gpuEnergyJoules"] == 36000.0 and s["pods"] == {} and s["energyKwh"] == 0.01


def test_nothing_is_written_until_something_changes_but_a_pod_being_deleted_is_written_at_once() -> None:
    s = look({}, [pod("run-0-a", T0)], T0 + timedelta(seconds=10))
    assert account(s, [pod("run-0-a", T0)], T0 + timedelta(seconds=20), EUR, min_interval=60) is None
    assert account(s, [pod("run-0-a", T0)], T0 + timedelta(seconds=80), EUR, min_interval=60) is not None
    assert account(s, [pod("run-0-a", T0, deleting=True)], T0 + timedelta(seconds=11), EUR, 60) is not None
    assert account(s, [pod("run-0-a", T0)], T0 + timedelta(seconds=11), Prices(), 60) is not None  # prices changed


def test_without_a_price_no_cost_is_written_and_a_removed_price_removes_it() -> None:
    s = look({}, [pod("p", T0, T0 + timedelta(seconds=3600), "Succeeded")], T0 + timedelta(hours=2))
    assert s["cost"] == 2.0
    s = look(s, [pod("p", T0, T0 + timedelta(seconds=3600), "Succeeded")], T0 + timedelta(hours=2), Prices())
    assert "cost" not in s and "currency" not in s and "costInputs" not in s and s["gpuHours"] == 1.0


# --- the operator on the test API server ---------------------------------------------------------

DATASET = {"apiVersion": "llmfab.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "books"},
           "spec": {"sources": [{"path": "corpus/*.txt"}], "tokenizer": {"type": "bpe", "vocabSize": 384},
                    "pod": {"resources": {"requests": {"cpu": "2", "nvidia.com/gpu": "1"}}}}}
PRICED = FAST.model_copy(update={"cost": Prices(currency="EUR", price_per_gpu_hour=3.6, watts_per_gpu=400),
                                 "usage_write_seconds": 0.2})


def usage(server: KubeAPIServer) -> dict[str, Any]:
    return dict((server.read("datasets", "books").get("status") or {}).get("usage") or {})


def pods_of(server: KubeAPIServer) -> list[dict[str, Any]]:
    return server.items("pods", labels="app.kubernetes.io/instance=books")


def new_pod(server: KubeAPIServer, seen: set[str]) -> dict[str, Any]:
    def fresh() -> dict[str, Any] | None:
        return next((p for p in pods_of(server) if p["metadata"]["name"] not in seen
                     and not p["metadata"].get("deletionTimestamp")), None)
    found: dict[str, Any] = wait_for(fresh, 15, "a new pod of the Dataset's Job")
    seen.add(found["metadata"]["name"])
    return found


def test_the_operator_counts_every_attempt_from_the_pods_times_and_requests(
    kube_apiserver: KubeAPIServer, kube: Any
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with run_operator(kube, PRICED) as runner:
        kube_apiserver.create(copy.deepcopy(DATASET))
        seen: set[str] = set()
        first = new_pod(kube_apiserver, seen)
        kube_apiserver.set_pod_phase(first, "Failed", exit_code=1, started=rfc(now - timedelta(seconds=300)),
                                     finished=rfc(now - timedelta(seconds=200)))
        second = new_pod(kube_apiserver, seen)  # the Job controller retries the index
        kube_apiserver.set_pod_phase(second, "Succeeded", started=rfc(now - timedelta(seconds=150)),
                                     finished=rfc(now - timedelta(seconds=100)))

        def counted() -> dict[str, Any] | None:
            u = usage(kube_apiserver)
            return u if u.get("attempts") == 2 and all(p.get("ended") for p in u["pods"].values()) else None

        u = wait_for(counted, 20, "both attempts in status.usage")
        assert (u["wallSeconds"], u["gpuSeconds"], u["cpuSeconds"], u["cpu"]) == (150.0, 150.0, 300.0, "reserved")
        assert u["cost"] == round(150 / 3600 * 3.6 + 0, 4) and u["currency"] == "EUR"
        assert u["energyKwh"] == round(400 * 150 / 3.6e6, 6) and u["costInputs"]["energy"] == "estimated"
        assert kube_apiserver.read("datasets", "books")["status"]["phase"] == "Succeeded"
        # The operator's metrics carry the same figures for the dashboards.
        labels = {"resource_namespace": "default", "kind": "Dataset", "resource": "books"}
        assert metrics.REGISTRY.get_sample_value("llmfab_usage_gpu_seconds", labels) == 150.0
        assert metrics.REGISTRY.get_sample_value("llmfab_usage_cost", {**labels, "currency": "EUR"}) == u["cost"]
        # Pods removed (as a TTL or a new revision would): their figures stay, once.
        for p in pods_of(kube_apiserver):
            kube_apiserver.store.delete(kube_apiserver.resource_type("pods"), "default", p["metadata"]["name"])
        u = wait_for(lambda: (x := usage(kube_apiserver)).get("gonePods") and not x.get("pods") and x, 20,
                     "the gone pods folded into gonePods")
        assert (u["attempts"], u["wallSeconds"], u["gpuSeconds"], u["cpuSeconds"]) == (2, 150.0, 150.0, 300.0)
        assert u["gonePods"]["gpuSeconds"] == 150.0
    assert runner.exception is None, runner.output


def test_a_suspended_and_resumed_run_counts_both_attempts(kube_apiserver: KubeAPIServer, kube: Any) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with run_operator(kube, PRICED) as runner:
        kube_apiserver.create(copy.deepcopy(DATASET))
        seen: set[str] = set()
        first = new_pod(kube_apiserver, seen)
        kube_apiserver.set_pod_phase(first, "Running", started=rfc(now - timedelta(seconds=600)))
        wait_for(lambda: usage(kube_apiserver).get("gpuSeconds", 0) >= 600, 20, "the running pod counted")
        suspended_at = datetime.now(UTC)
        kube.patch({"apiVersion": "llmfab.dev/v1alpha1", "kind": "Dataset",
                    "metadata": {"name": "books", "namespace": "default"}, "spec": {"suspend": True}})
        wait_for(lambda: first["metadata"]["name"] not in {p["metadata"]["name"] for p in pods_of(kube_apiserver)},
                 20, "the Job controller to delete the pod")
        kube.patch({"apiVersion": "llmfab.dev/v1alpha1", "kind": "Dataset",
                    "metadata": {"name": "books", "namespace": "default"}, "spec": {"suspend": False}})
        second = new_pod(kube_apiserver, seen)
        kube_apiserver.set_pod_phase(second, "Succeeded", started=rfc(now + timedelta(seconds=100)),
                                     finished=rfc(now + timedelta(seconds=160)))

        def both() -> dict[str, Any] | None:
            u = usage(kube_apiserver)
            folded = first["metadata"]["name"] not in (u.get("pods") or {})
            return u if u.get("attempts") == 2 and folded and u.get("gonePods") else None

        u = wait_for(both, 20, "the suspended attempt folded and the resumed one counted")
        first_seconds = u["gonePods"]["gpuSeconds"]
        # Counted to the last look before it vanished: between the first look and the suspension.
        assert 600 <= first_seconds <= (suspended_at - (now - timedelta(seconds=600))).total_seconds() + 1
        assert u["gpuSeconds"] == pytest.approx(first_seconds + 60.0)
    assert runner.exception is None, runner.output
