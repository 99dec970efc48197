"""The operator with Kueue on the test API server (tests/kube/kueue.py plays Kueue; the test is its
scheduler): queued Jobs wait suspended, run when admitted, are preempted and re-admitted, and the
operator never fights Kueue for ``spec.suspend``. Pods are played by the test here; the slow tests
at the end run them for real (tests/cluster/kubelet.py) and check what a preemption costs a run."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from llmfab.operator import rbac
from tests.cluster.kubelet import LocalKubelet, wait_for
from tests.cluster.operator_runner import run_operator
from tests.cluster.test_operator import (
    DATASET,
    RUN,
    conditions,
    finish_job,
    jobs,
    phase_is,
    rbac_call,
    rev,
    status,
)
from tests.cluster.test_pods import CLAIM, REPO, pod_logs, training
from tests.kube.apiserver import KubeAPIServer
from tests.kube.kueue import KueueStandIn

QUEUED = {"queueName": "user-queue", "priorityClassName": "training"}
TRAINING_PRIORITY = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
                     "metadata": {"name": "training"}, "value": 100, "description": "training: yields to serving"}


def queued(manifest: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(manifest)
    out["spec"]["scheduling"] = dict(QUEUED)
    return out


def events(server: KubeAPIServer, name: str) -> list[str]:
    """The reasons of ``name``'s events in the order they were stored."""
    mine = [e for e in server.items("events") if e["involvedObject"]["name"] == name]
    return [e["reason"] for e in sorted(mine, key=lambda e: int(e["metadata"]["resourceVersion"]))]


def pods(server: KubeAPIServer, job: str) -> list[dict[str, Any]]:
    return [p for p in server.items("pods", labels=f"job-name={job}") if not p["metadata"].get("deletionTimestamp")]


def operator_calls(server: KubeAPIServer) -> list[Any]:
    return [r for r in server.request_log if r.user_agent.startswith(("kopf/", "llmfab-operator/")) and r.resource]


def claim_with_corpus(tmp_path: Path) -> Path:
    claim = tmp_path / "claim"
    (claim / "corpus").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "data" / "austen_pride_and_prejudice.txt", claim / "corpus")
    return claim


def small_dataset() -> dict[str, Any]:
    dataset = copy.deepcopy(DATASET)
    dataset["spec"]["sources"][0].update(documentPer="paragraph", paragraphsPerDocument=6)
    return dataset


def run_dataset_through_kueue(server: KubeAPIServer, kueue: KueueStandIn) -> None:
    server.create(queued(DATASET))
    [job] = wait_for(lambda: jobs(server, "books"), 15, "the Dataset's Job")
    s = wait_for(lambda: phase_is(server, "datasets", "books", "Queued"), 15, "Queued")
    assert job["spec"]["suspend"] is True and pods(server, job["metadata"]["name"]) == []
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "user-queue"
    # Once Kueue made its Workload, the message says why it waits, in Kueue's words.
    wait_for(lambda: "insufficient unused quota" in status(server, "datasets", "books")["message"], 15,
             "Kueue's reason in the message")
    assert conditions(s)["Progressing"] == ("True", "Queued")
    kueue.admit(job["metadata"]["name"])
    finish_job(server, job)
    wait_for(lambda: phase_is(server, "datasets", "books", "Succeeded"), 15, "the Dataset to succeed")


def test_a_queued_run_waits_runs_when_admitted_and_survives_a_preemption_without_a_fight(
    kube_apiserver: KubeAPIServer, kueue: KueueStandIn, operator: Any
) -> None:
    kube_apiserver.create(TRAINING_PRIORITY)
    run_dataset_through_kueue(kube_apiserver, kueue)
    kube_apiserver.create(queued(RUN))
    name = f"tiny-train-{rev(RUN)}"
    wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Queued"), 15, "Queued")
    workload = wait_for(lambda: kueue.workload(name), 10, "its Workload")
    assert workload["spec"]["priority"] == 100 and workload["spec"]["podSets"][0]["count"] == 1

    kueue.admit(name)
    [pod] = wait_for(lambda: pods(kube_apiserver, name), 10, "the training pod")
    kube_apiserver.set_pod_phase(pod, "Running")
    wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Running"), 15, "Running")

    kueue.preempt(name)
    s = wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Preempted"), 15, "Preempted")
    assert conditions(s)["Suspended"] == ("True", "Preempted") and "checkpoints kept" in s["message"]
    assert pods(kube_apiserver, name) == []
    # Kueue owns the Job's suspend: through a few of the operator's resyncs it stays as Kueue set it.
    wait_for(lambda: len([r for r in operator_calls(kube_apiserver) if r.resource == "workloads"]) >= 6, 15,
             "three more looks at the Workload")
    assert kube_apiserver.read("jobs", name)["spec"]["suspend"] is True and kueue.stopped_unadmitted == []

    kueue.admit(name)
    [pod] = wait_for(lambda: pods(kube_apiserver, name), 10, "the training pod again")
    kube_apiserver.set_pod_phase(pod, "Running")
    wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Running"), 15, "Running again")
    finish_job(kube_apiserver, kube_apiserver.read("jobs", name))
    wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Succeeded"), 15, "Succeeded")

    def transitions() -> list[str]:
        return [r for r in events(kube_apiserver, "tiny") if r in ("Queued", "Running", "Preempted", "Completed")]

    wait_for(lambda: "Completed" in transitions(), 10, "the Completed event")
    assert transitions() == ["Queued", "Running", "Preempted", "Running", "Completed"], transitions()
    assert kueue.stopped_unadmitted == []
    calls = {rbac_call(r) for r in operator_calls(kube_apiserver)}
    assert ("batch", "jobs", "patch") not in calls  # never a suspend (nor anything else) on a queued Job
    assert ("kueue.x-k8s.io", "workloads", "list") in calls
    assert {c for c in calls if not rbac.allows(rbac.operator_rules(), *c)} == set()


def test_spec_suspend_of_a_queued_run_deactivates_its_workload_and_resume_requeues_it(
    kube_apiserver: KubeAPIServer, kueue: KueueStandIn, operator: Any, kubectl: Any
) -> None:
    kube_apiserver.create(TRAINING_PRIORITY)
    run_dataset_through_kueue(kube_apiserver, kueue)
    kube_apiserver.create(queued(RUN))
    name = f"tiny-train-{rev(RUN)}"
    wait_for(lambda: kueue.workload(name), 15, "its Workload")
    kueue.admit(name)
    wait_for(lambda: pods(kube_apiserver, name), 10, "the training pod")

    kubectl("patch", "trainingrun", "tiny", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    s = wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Suspended"), 15, "Suspended")
    assert conditions(s)["Suspended"] == ("True", "Suspended")
    wl = wait_for(lambda: (w := kueue.workload(name)) and w["spec"]["active"] is False and w, 15, "a deactivated Workload")
    assert {c["type"]: c["reason"] for c in wl["status"]["conditions"]}["Evicted"] == "InactiveWorkload"
    assert kube_apiserver.read("jobs", name)["spec"]["suspend"] is True and pods(kube_apiserver, name) == []

    kubectl("patch", "trainingrun", "tiny", "--type=merge", "-p", '{"spec": {"suspend": false}}')
    wait_for(lambda: kueue.workload(name)["spec"]["active"] is True, 15, "the Workload active again")  # type: ignore[index]
    wait_for(lambda: phase_is(kube_apiserver, "trainingruns", "tiny", "Queued"), 15, "Queued again")
    kueue.admit(name)
    wait_for(lambda: pods(kube_apiserver, name), 10, "the training pod again")
    assert kueue.stopped_unadmitted == []
    calls = {rbac_call(r) for r in operator_calls(kube_apiserver)}
    assert ("kueue.x-k8s.io", "workloads", "patch") in calls and ("batch", "jobs", "patch") not in calls
    assert {c for c in calls if not rbac.allows(rbac.operator_rules(), *c)} == set()


# --- real pods: what a preemption costs a run ----------------------------------------------------

STEPS = 100  # a step reports to the API server: ~20-150 ms here, so a preemption at step 3 lands mid-run


def preemptable(name: str, nodes: int, queue: bool) -> dict[str, Any]:
    """A tiny fp32 run that checkpoints only when stopped and at the end, logs every step, and may
    not retry a failed pod (a preemption counted as a failure would fail it)."""
    run = training(nodes)
    run["metadata"]["name"] = name
    run["spec"].update(maxSteps=STEPS, evalEverySteps=None, checkpoint={"everySteps": 10_000, "keepLast": 1},
                       monitoring={"prometheusPort": None, "tensorboard": False, "logEverySteps": 1})
    run["spec"]["pod"]["retries"] = 0
    if queue:
        run["spec"]["scheduling"] = dict(QUEUED)
    return run


def trainer_events(server: KubeAPIServer, name: str, reason: str) -> list[str]:
    return [e["message"] for e in server.items("events")
            if e["involvedObject"]["name"] == name and e["reason"] == reason and e["source"]["component"] == "llmfab-train"]


def weights(run_dir: Path) -> dict[str, Any]:
    return load_file(run_dir / "model" / "model.safetensors")


def preempt_mid_run(server: KubeAPIServer, kueue: KueueStandIn, kubelet: LocalKubelet, job: str, run_dir: Path) -> int:
    """Admit ``job``, preempt it once its trainer is past step 3, wait until its pods are gone;
    the step its SIGTERM checkpoint saved, after checking that at most one step was lost."""
    kueue.admit(job)
    try:
        wait_for(lambda: (status(server, "trainingruns", "tiny").get("step") or 0) >= 3, 300, "step 3", interval=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{pod_logs(kubelet)}") from None
    kueue.preempt(job)
    wait_for(lambda: phase_is(server, "trainingruns", "tiny", "Preempted"), 60, "Preempted")
    stopped = wait_for(lambda: (codes := {n: c for n, c in kubelet.exit_codes.items() if n.startswith(job)})
                       and not [n for n, p in kubelet.procs.items() if n.startswith(job) and p.poll() is None]
                       and codes, 90, "the preempted pods to exit")
    assert set(stopped.values()) == {143}, (stopped, pod_logs(kubelet))  # SIGTERM: each saved and stopped
    [saved] = trainer_events(server, "tiny", "Preempted")
    step = int(saved.split("SIGTERM at step ")[1].split(":")[0])
    assert f"saved step-{step:08d}" in saved, saved
    ran = max(json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert ran - step <= 1 and step < STEPS, (ran, step)  # the work lost: at most the step under way
    return step


@pytest.mark.slow
def test_a_preempted_run_resumes_from_its_sigterm_checkpoint_to_the_weights_of_an_uninterrupted_run(
    kube_apiserver: KubeAPIServer, kueue: KueueStandIn, kube: Any, kubeconfig: Path, tmp_path: Path
) -> None:
    claim = claim_with_corpus(tmp_path)
    run, reference = preemptable("tiny", 1, queue=True), preemptable("ref", 1, queue=False)
    job = f"tiny-train-{rev(run)}"
    with run_operator(kube), LocalKubelet(kube, "default", {CLAIM: claim}, tmp_path / "pods", kubeconfig) as kubelet:
        kube_apiserver.create(TRAINING_PRIORITY)
        kube_apiserver.create(small_dataset())
        kube_apiserver.create(run)
        kube_apiserver.create(reference)  # the same run, not queued: never stopped
        wait_for(lambda: kueue.workload(job), 120, "the queued run's Workload")
        step = preempt_mid_run(kube_apiserver, kueue, kubelet, job, claim / "runs" / "tiny")
        assert kube_apiserver.read("jobs", job)["spec"]["suspend"] is True and kueue.stopped_unadmitted == []
        kueue.admit(job)
        try:
            for name in ("tiny", "ref"):
                wait_for(lambda name=name: (s := status(kube_apiserver, "trainingruns", name)).get("phase") == "Succeeded"
                         and (s.get("stages") or {}).get("train") == "Succeeded", 300, f"{name} to succeed", interval=1)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{pod_logs(kubelet)}") from None
    assert trainer_events(kube_apiserver, "tiny", "Resumed") == [f"resumed from step-{step:08d} (step {step})"]
    assert status(kube_apiserver, "trainingruns", "tiny")["step"] == STEPS
    ours, theirs = weights(claim / "runs" / "tiny"), weights(claim / "runs" / "ref")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
def test_a_two_pod_run_is_preempted_whole_and_resumes_on_both_pods(
    kube_apiserver: KubeAPIServer, kueue: KueueStandIn, kube: Any, kubeconfig: Path, tmp_path: Path
) -> None:
    claim = claim_with_corpus(tmp_path)
    run = preemptable("tiny", 2, queue=True)
    job = f"tiny-train-{rev(run)}"
    with run_operator(kube), LocalKubelet(kube, "default", {CLAIM: claim}, tmp_path / "pods", kubeconfig) as kubelet:
        kube_apiserver.create(TRAINING_PRIORITY)
        kube_apiserver.create(small_dataset())
        kube_apiserver.create(run)
        workload = wait_for(lambda: kueue.workload(job), 120, "the queued run's Workload")
        assert [p["count"] for p in workload["spec"]["podSets"]] == [2]  # one Workload for both pods
        step = preempt_mid_run(kube_apiserver, kueue, kubelet, job, claim / "runs" / "tiny")
        # Both ranks saved their shard of the same step before stopping.
        assert len(list((claim / "runs" / "tiny" / "checkpoints" / f"step-{step:08d}").glob("*.distcp"))) == 2
        kueue.admit(job)
        try:
            wait_for(lambda: (s := status(kube_apiserver, "trainingruns", "tiny")).get("phase") == "Succeeded"
                     and (s.get("stages") or {}).get("train") == "Succeeded", 300, "the run to succeed", interval=1)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{pod_logs(kubelet)}") from None
    assert trainer_events(kube_apiserver, "tiny", "Resumed") == [f"resumed from step-{step:08d} (step {step})"]
    finished = [n for n, c in kubelet.exit_codes.items() if n.startswith(job) and c == 0]
    assert len(finished) == 2, kubelet.exit_codes
