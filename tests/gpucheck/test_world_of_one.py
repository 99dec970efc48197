"""``gpu_check_worker.py world-of-one``: the real ``llmfab train run`` in a one-rank process group (gloo
here, NCCL on a GPU) shards with FSDP2, checkpoints, resumes and exports: the one-GPU form of the
``fsdp2`` check, run on CPU so that its plumbing is not first tried on a lent GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.training.conftest import build_dataset, tiny_spec

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "scripts" / "gpu_check_worker.py"


def _train(spec: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMFAB_HOME": str(home), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(WORKER), "world-of-one", "--", "train", "run", "--spec", str(spec)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_a_world_of_one_shards_with_fsdp2_checkpoints_resumes_and_exports(tmp_path: Path) -> None:
    home = tmp_path / "home"
    build_dataset(home, docs=300)
    spec = tmp_path / "run.yaml"
    doc = tiny_spec("w1", maxSteps=4, activationCheckpointing={"mode": "full"},
                    checkpoint={"everySteps": 2, "keepLast": 2})
    spec.write_text(yaml.safe_dump(doc))
    first = _train(spec, home)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "gpu-check: fully_shard applied to 3 modules" in first.stdout  # two blocks and the root
    status = json.loads((home / "runs" / "w1.status.json").read_text())
    assert (status["phase"], status["step"]) == ("Succeeded", 4)
    assert (home / "runs" / "w1" / "model" / "model.safetensors").is_file()
    trainer_state = json.loads((home / "runs" / "w1" / "checkpoints" / "step-00000004" / "trainer.json").read_text())
    assert trainer_state["step"] == 4

    doc["spec"]["maxSteps"] = 6  # a longer run of the same model resumes from step 4's sharded checkpoint
    spec.write_text(yaml.safe_dump(doc))
    second = _train(spec, home)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    events = [json.loads(line) for line in (home / "runs" / "w1.events.jsonl").read_text().splitlines()]
    assert any(e["reason"] == "Resumed" and "(step 4)" in e["message"] for e in events)
    assert json.loads((home / "runs" / "w1.status.json").read_text())["step"] == 6
