"""How `llmfab train run` re-launches itself under torchrun, locally and in a cluster pod."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmfab.api.training_run import TrainingRunSpec
from llmfab.errors import WorkloadError
from llmfab.training.loop.launcher import rendezvous, torchrun_command


def _spec(nodes: int = 1, per_node: int = 2) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(
        {"dataset": {"name": "tiny"}, "release": {"license": "apache-2.0"},
         "parallelism": {"nodes": nodes, "processesPerNode": per_node}}
    )


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LLMFAB_RDZV_ENDPOINT", "LLMFAB_NODE_RANK", "JOB_COMPLETION_INDEX", "NODE_RANK",
                "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


def test_one_node_rendezvous_is_a_free_local_port() -> None:
    endpoint, rank = rendezvous(_spec())
    host, port = endpoint.split(":")
    assert host == "127.0.0.1" and int(port) > 0 and rank == 0


def test_cluster_pod_takes_endpoint_and_node_rank_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_ADDR", "run-0.run")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    assert rendezvous(_spec(nodes=4)) == ("run-0.run:29500", 3)
    monkeypatch.setenv("LLMFAB_RDZV_ENDPOINT", "pod0:1234")
    monkeypatch.setenv("LLMFAB_NODE_RANK", "2")
    assert rendezvous(_spec(nodes=4)) == ("pod0:1234", 2)


def test_several_nodes_without_a_rendezvous_address_is_a_clear_error() -> None:
    with pytest.raises(WorkloadError, match=r"spec\.parallelism\.nodes: 2 nodes need a rendezvous address"):
        rendezvous(_spec(nodes=2))


def test_torchrun_command_carries_the_parallelism_of_the_spec() -> None:
    cmd = torchrun_command(_spec(nodes=2, per_node=4), Path("/a/spec.yaml"), "pod0:29500", 1, force=False)
    joined = " ".join(cmd[1:])
    assert joined.startswith("-m torch.distributed.run --nnodes 2 --nproc-per-node 4 --node-rank 1 "
                             "--rdzv-backend c10d --rdzv-endpoint pod0:29500")
    assert cmd[-4:] == ["-m", "llmfab.training.launch", "--spec", "/a/spec.yaml"]
