"""`kubectl apply` to the operator, and the pods it makes run for real (tests/cluster/kubelet.py):
the container command, environment and volumes of every built pod execute here as local
processes, so a pod spec that would fail on a cluster fails in this test.

The workloads report progress from inside their pods to the API server (``LLMFAB_STATUS=kubernetes``),
which `kubectl get` then shows in the printer columns.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from llmfab.operator import metrics, rbac
from tests.cluster.conftest import run_operator
from tests.cluster.kubelet import LocalKubelet, wait_for
from tests.cluster.test_operator import DATASET, RUN, conditions, status
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

    table = kubectl("get", "trainingruns").stdout.splitlines()
    print("\n".join(table))
    assert table[0].split() == ["NAME", "PHASE", "STEP", "LOSS", "ETA(S)", "AGE"], table
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
    denied = {(r.api_group or "", f"{r.resource}/{r.subresource}" if r.subresource else str(r.resource), r.verb)
              for r in workload_calls if r.resource}
    denied = {t for t in denied if not rbac.allows(rbac.workload_rules(), *t)}
    assert denied == set()
