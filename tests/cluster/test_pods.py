"""`kubectl apply` to the operator, and the pods it makes run for real (tests/cluster/kubelet.py):
the container command, environment and volumes of every built pod execute here as local
processes, so a pod spec that would fail on a cluster fails in this test.

The workloads report progress from inside their pods to the API server (``LLMFAB_STATUS=kubernetes``),
which `kubectl get` then shows in the printer columns.
"""

from __future__ import annotations

import copy
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from llmfab.api import parse_resource
from llmfab.operator import metrics, rbac
from llmfab.operator.builders.dataset import build_ray_job
from tests.cluster.kubelet import LocalKubelet, wait_for
from tests.cluster.operator_runner import run_operator
from tests.cluster.test_operator import DATASET, RUN, conditions, rbac_call, status
from tests.kube.apiserver import KubeAPIServer

REPO = Path(__file__).resolve().parents[2]
CLAIM = "llmfab-artifacts"


def training(nodes: int) -> dict[str, Any]:
    run = copy.deepcopy(RUN)
    run["spec"].update(
        maxSteps=6, precision="fp32", batch={"globalTokens": 256}, optimizer={"lr": 3.0e-3, "warmupSteps": 2},
        checkpoint={"everySteps": 3, "keepLast": 1}, evalEverySteps=3, evalBatches=2,
        monitoring={"prometheusPort": None, "tensorboard": False},
        parallelism={"nodes": nodes, "processesPerNode": 1},
        pod={"resources": {"limits": {"nvidia.com/gpu": "0"}}},  # CPU pods
    )
    return run


def pod_logs(kubelet: LocalKubelet) -> str:
    logs = "\n".join(f"--- {name}\n{kubelet.log(name)[-3000:]}" for name in kubelet.logs)
    return logs + "".join(f"\nkubelet error: {e}" for e in kubelet.errors[-5:])


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [1, 2], ids=["one-pod", "two-pods"])
def test_kubectl_apply_runs_a_dataset_and_training_in_real_pods(
    nodes: int, kube_apiserver: KubeAPIServer, kube: Any, kubeconfig: Path, kubectl: Any, tmp_path: Path
) -> None:
    claim = tmp_path / "claim"
    (claim / "corpus").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "data" / "austen_pride_and_prejudice.txt", claim / "corpus")
    dataset = copy.deepcopy(DATASET)
    dataset["spec"]["sources"][0].update(documentPer="paragraph", paragraphsPerDocument=6)
    manifest = tmp_path / "pipeline.yaml"
    manifest.write_text(yaml.safe_dump_all([dataset, training(nodes)]))
    started = time.monotonic()
    with run_operator(kube), LocalKubelet(kube, "default", {CLAIM: claim}, tmp_path / "pods", kubeconfig) as kubelet:
        kubectl("apply", "-f", str(manifest))

        def finished() -> dict[str, Any] | None:
            s = status(kube_apiserver, "trainingruns", "tiny")
            assert s.get("phase") != "Failed", (s, pod_logs(kubelet))
            assert status(kube_apiserver, "datasets", "books").get("phase") != "Failed", pod_logs(kubelet)
            # The operator's view: the training Job completed (the workload says Succeeded earlier).
            return s if s.get("phase") == "Succeeded" and (s.get("stages") or {}).get("train") == "Succeeded" else None

        try:
            s = wait_for(finished, 240, "the TrainingRun to succeed in its pods", interval=1)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{status(kube_apiserver, 'trainingruns', 'tiny')}\n"
                                 f"{status(kube_apiserver, 'datasets', 'books')}\n{pod_logs(kubelet)}") from None
    train_pods = [n for n in kubelet.exit_codes if n.startswith("tiny-train-")]
    assert len(train_pods) == nodes and all(kubelet.exit_codes[n] == 0 for n in train_pods), pod_logs(kubelet)
    # Progress came from the workload inside the pod; the phase and conditions from the operator.
    assert s["step"] == 6 and s["loss"] > 0 and s["parameters"] > 0, s
    assert conditions(s)["Complete"] == ("True", "Completed")
    ds = status(kube_apiserver, "datasets", "books")
    assert ds["documents"] > 0 and ds["tokens"] > 0 and ds["steps"], ds
    assert (claim / "datasets" / "books" / "manifest.json").exists()
    assert (claim / "runs" / "tiny" / "model" / "config.json").exists()
    # Each rank (one per pod) wrote its shard of the last checkpoint: the pods met through the
    # headless Service's names and trained as one job.
    [last] = sorted((claim / "runs" / "tiny" / "checkpoints").glob("step-*"))
    assert len(list(last.glob("*.distcp"))) == nodes, sorted(p.name for p in last.iterdir())

    # Usage from the pods' own times (the kubelet's startTime and finishedAt): one run of `nodes`
    # pods, rank 0's time as its wall time, no GPU; the figures fit inside the test's own clock.
    usage = s["usage"]
    assert usage["attempts"] == 1 and usage["gpuSeconds"] == 0 and len(usage["pods"]) == nodes, usage
    assert all(p["ended"] and p["stage"] == "train" for p in usage["pods"].values()), usage
    assert 0 < usage["wallSeconds"] <= time.monotonic() - started + 1, usage
    assert status(kube_apiserver, "datasets", "books")["usage"]["attempts"] == 1

    table = kubectl("get", "trainingruns").stdout.splitlines()
    print("\n".join(table))
    assert table[0].split() == ["NAME", "PHASE", "STEP", "LOSS", "ETA(S)", "GPU-H", "COST", "AGE"], table
    row = table[1].split()
    assert row[:3] == ["tiny", "Succeeded", "6"], table
    datasets = kubectl("get", "lds").stdout.splitlines()
    assert datasets[0].split()[:4] == ["NAME", "PHASE", "DOCUMENTS", "TOKENS"]
    assert datasets[1].split()[1] == "Succeeded" and int(datasets[1].split()[2]) == ds["documents"]
    described = kubectl("describe", "trainingrun", "tiny").stdout
    assert "Succeeded" in described and "Completed" in described and "JobCreated" in described

    # The operator exports what it saw (llmfab_operator_*, and the Dataset's per-step counts).
    exported = generate_latest(metrics.REGISTRY).decode()
    assert 'llmfab_operator_reconciles_total{kind="TrainingRun"}' in exported
    assert 'llmfab_operator_resources{kind="TrainingRun",phase="Succeeded"}' in exported
    kept = f'llmfab_dataset_documents{{dataset="books",namespace="default",stage="out",step="{ds["steps"][-1]["name"]}"}}'
    assert f"{kept} {float(ds['steps'][-1]['documentsOut'])}" in exported, exported

    workload_calls = [r for r in kube_apiserver.request_log if r.user_agent.startswith("llmfab-workload/")]
    assert workload_calls, "the pods reported nothing to the API server"
    calls = {rbac_call(r) for r in workload_calls if r.resource}
    assert {c for c in calls if not rbac.allows(rbac.workload_rules(), *c)} == set()


@pytest.mark.slow
def test_the_ray_job_entrypoint_builds_the_dataset_on_a_running_ray_cluster(tmp_path: Path) -> None:
    """What KubeRay runs on the RayCluster's head for a Dataset with ``engine.ray.cluster``: the
    RayJob's entrypoint, with its runtime environment's variables and RAY_ADDRESS set."""
    artifacts = tmp_path / "artifacts"
    (artifacts / "corpus").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "data" / "moby_dick.txt", artifacts / "corpus")
    dataset = copy.deepcopy(DATASET)
    dataset["metadata"].update(namespace="default", uid="0000-ray")
    dataset["spec"]["engine"] = {"type": "ray", "ray": {"cluster": "raycluster"}}
    job = build_ray_job(parse_resource(dataset))
    env_vars = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    # The head's artifacts volume is a directory here; no API server, so status goes to a file.
    spec = yaml.safe_load(env_vars["LLMFAB_SPEC"])
    spec["metadata"]["annotations"]["llmfab.dev/source-dir"] = str(artifacts)
    env_vars.update(LLMFAB_HOME=str(artifacts), LLMFAB_STATUS="file", LLMFAB_SPEC=yaml.safe_dump(spec))
    ray_dir = Path(f"/tmp/ray-{os.getpid()}")  # Ray's socket paths must stay short
    base = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # A Ray cluster of our own (its head dies with this process), not `ray start`: `ray stop`
    # would stop every Ray on the machine.
    head = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys, time; ray.init(num_cpus=2, object_store_memory=128 << 20, "
         f"include_dashboard=False, _temp_dir={str(ray_dir)!r}); "
         "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()"],
        env=base, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = head.stdout.readline().strip()  # type: ignore[union-attr]
        out = subprocess.run(shlex.split(job["spec"]["entrypoint"]), env={**base, **env_vars, "RAY_ADDRESS": address},
                             capture_output=True, text=True, timeout=300)
    finally:
        head.communicate(timeout=60)  # closing stdin ends the head process and its cluster
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert (artifacts / "datasets" / "books" / "manifest.json").exists()


def train_pods_running(kubelet: LocalKubelet) -> list[str]:
    return [n for n, p in kubelet.procs.items() if n.startswith("tiny-train-") and p.poll() is None]


@pytest.mark.slow
def test_deleting_a_training_run_with_policy_delete_leaves_no_run_directory_for_a_later_run(
    kube_apiserver: KubeAPIServer, kube: Any, kubeconfig: Path, kubectl: Any, tmp_path: Path
) -> None:
    """Issue 19, item 7: a trainer still running (checkpointing every few steps, and once more on
    SIGTERM) must be stopped before the clean-up Job removes ``runs/<name>/``; otherwise it
    recreates ``runs/<name>/checkpoints/``, and the next TrainingRun of the same name resumes."""
    claim = tmp_path / "claim"
    (claim / "corpus").mkdir(parents=True)
    shutil.copy(REPO / "examples" / "data" / "austen_pride_and_prejudice.txt", claim / "corpus")
    dataset = copy.deepcopy(DATASET)
    dataset["spec"]["sources"][0].update(documentPer="paragraph", paragraphsPerDocument=6)
    endless = training(1)
    endless["spec"].update(maxSteps=100_000, deletionPolicy="Delete", checkpoint={"everySteps": 10, "keepLast": 1},
                           evalEverySteps=None)
    run_dir = claim / "runs" / "tiny"
    with run_operator(kube), LocalKubelet(kube, "default", {CLAIM: claim}, tmp_path / "pods", kubeconfig) as kubelet:
        kube_apiserver.create(dataset)
        kube_apiserver.create(copy.deepcopy(endless))
        try:
            wait_for(lambda: (status(kube_apiserver, "trainingruns", "tiny").get("step") or 0) >= 12, 240,
                     "the trainer to pass step 12", interval=1)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{pod_logs(kubelet)}") from None
        assert list((run_dir / "checkpoints").glob("step-*")), "no checkpoint before the deletion"
        kubectl("delete", "trainingrun", "tiny", "--wait=false")
        try:
            wait_for(lambda: not kube_apiserver.items("trainingruns"), 120, "the TrainingRun to be gone", interval=0.5)
            # Nothing of it runs any more (the operator waits for this; the old code did not)...
            wait_for(lambda: not train_pods_running(kubelet) and not kube_apiserver.items("pods", labels="app.kubernetes.io/instance=tiny"),
                     60, "its pods to be gone", interval=0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{kube_apiserver.items('pods')}\n{pod_logs(kubelet)}") from None
        # ...so nothing recreated its directory after the clean-up removed it.
        assert not run_dir.exists(), sorted(str(p.relative_to(claim)) for p in run_dir.rglob("*"))
        events = [e for e in kube_apiserver.items("events") if e["involvedObject"]["name"] == "tiny"]
        assert any(e["reason"] == "Preempted" for e in events), [e["reason"] for e in events]  # it got SIGTERM
        waited = [e["message"] for e in events if e["reason"] == "Deleting"]  # what the deletion waited for
        assert any("pod(s) to stop (tiny-train-" in m for m in waited), waited

        again = training(1)
        again["spec"].update(maxSteps=4, checkpoint={"everySteps": 2, "keepLast": 1})
        uid = kube_apiserver.create(again)["metadata"]["uid"]
        try:
            s = wait_for(lambda: (x := status(kube_apiserver, "trainingruns", "tiny")).get("phase") == "Succeeded"
                         and (x.get("stages") or {}).get("train") == "Succeeded" and x, 240,
                         "the second TrainingRun to succeed", interval=1)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{pod_logs(kubelet)}") from None
    resumed = [e["message"] for e in kube_apiserver.items("events")
               if e["involvedObject"].get("uid") == uid and e["reason"] == "Resumed"]
    assert resumed == [], resumed
    assert s["step"] == 4, s  # a resume from the first run's checkpoint would have started past it
    operator_calls = [r for r in kube_apiserver.request_log
                      if r.user_agent.startswith(("kopf/", "llmfab-operator/")) and r.resource]
    calls = {rbac_call(r) for r in operator_calls}
    assert ("batch", "jobs", "delete") in calls and ("", "pods", "list") in calls
    assert {c for c in calls if not rbac.allows(rbac.operator_rules(), *c)} == set()
