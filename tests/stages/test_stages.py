"""The orchestration rules `llmfab up` and the operator share (llmfab/stages.py), and the CLI's
answer for every stage name it accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmfab.api import parse_resource
from llmfab.stages import (
    STAGES,
    is_primary,
    owns_phase,
    spec_file_path,
    stage_available,
    stage_command,
    stages_for,
    write_spec_file,
)


def _res(kind: str, spec: dict) -> object:
    return parse_resource({"apiVersion": "llmfab.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec})


RUN = {"dataset": {"name": "d"}, "release": {"license": "apache-2.0"},
       "model": {"layers": 2, "hidden": 64, "heads": 4, "contextLength": 32}}
SVC = {"model": {"trainingRun": "r"}}


def test_stages_per_kind_in_order() -> None:
    assert stages_for(_res("Dataset", {"sources": [{"path": "a.txt"}]})) == ["data"]
    assert stages_for(_res("TrainingRun", RUN)) == ["train", "eval"]
    assert stages_for(_res("TrainingRun", {**RUN, "eval": {"enabled": False}})) == ["train"]
    assert stages_for(_res("InferenceService", SVC)) == ["quantize", "eval", "serve"]
    unquantized = {**SVC, "quantization": {"method": "none"}, "eval": {"enabled": False}}
    assert stages_for(_res("InferenceService", unquantized)) == ["serve"]


def test_which_stage_failures_fail_the_resource() -> None:
    assert owns_phase("train", "TrainingRun") and is_primary("train", "TrainingRun")
    assert not owns_phase("eval", "TrainingRun")  # a trained model stays usable downstream
    assert owns_phase("quantize", "InferenceService") and not is_primary("quantize", "InferenceService")
    assert owns_phase("eval", "InferenceService") and owns_phase("serve", "InferenceService")
    assert owns_phase("data", "Dataset") and owns_phase("reward", "RewardModel")


def test_stage_command_is_the_pod_command() -> None:
    assert stage_command("train", "/artifacts/runs/x.spec.yaml") == [
        "python", "-m", "llmfab", "train", "run", "--spec", "/artifacts/runs/x.spec.yaml"
    ]
    assert stage_command("data", Path("s.yaml"), force=True, python="/py")[-1] == "--force"


def test_spec_file_is_written_atomically_and_keeps_explicit_nulls(tmp_path: Path) -> None:
    res = _res("TrainingRun", {**RUN, "monitoring": {"prometheusPort": None}})
    path = write_spec_file(res, spec_file_path("runs", "x", tmp_path))  # type: ignore[arg-type]
    assert path == tmp_path / "runs" / "x.spec.yaml"
    assert yaml.safe_load(path.read_text())["spec"]["monitoring"]["prometheusPort"] is None
    assert [p.name for p in path.parent.iterdir()] == ["x.spec.yaml"]  # no temporary left behind


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_the_cli_accepts_answers_without_a_traceback(stage: str, tmp_path: Path) -> None:
    """An unknown spec file: exit 2 with a message; a stage whose code is absent: exit 2, named."""
    kind = STAGES[stage].kinds[0]
    spec = {"Dataset": {"sources": [{"path": "missing.txt"}]}, "TrainingRun": RUN, "RewardModel": {
        "base": {"trainingRun": "r"}, "preferences": {"path": "p.jsonl"}}, "InferenceService": SVC}[kind]
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"apiVersion": "llmfab.dev/v1alpha1", "kind": kind,
                                         "metadata": {"name": "x"}, "spec": spec}))
    env = {**os.environ, "LLMFAB_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "llmfab", stage, "run", "--spec", str(spec_file)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in out.stderr, out.stderr
    if not stage_available(stage):
        assert out.returncode == 2
        assert f"`llmfab {stage} run` ({' and '.join(STAGES[stage].kinds)}) is not supported" in out.stderr
        status = json.loads((tmp_path / "home" / spec_dir(kind) / "x.status.json").read_text())
        assert status["phase"] == "Failed" and status["conditions"][0]["reason"] == "NotSupported"
    else:
        assert out.returncode in (1, 2, 3), out.stderr  # missing inputs: failed, or waiting on a dependency
        assert "error:" in out.stderr


def spec_dir(kind: str) -> str:
    from llmfab.api import KINDS

    return KINDS[kind].ARTIFACT_DIR


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"pruning": {"enabled": True}, "objective": "sft", "initFrom": {"trainingRun": "base"},
      "sft": {"path": "examples.jsonl"}}, "spec.pruning.enabled"),
     ({"objective": "distill", "initFrom": {"trainingRun": "base"}, "distill": {"teacher": "base"}},
      "spec.initFrom"),
     ({"initFrom": {"trainingRun": "base"}}, "spec.initFrom")],
)
def test_a_training_field_that_would_do_nothing_is_refused(extra: dict, field: str, tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"apiVersion": "llmfab.dev/v1alpha1", "kind": "TrainingRun",
                                         "metadata": {"name": "x"}, "spec": {**RUN, **extra}}))
    env = {**os.environ, "LLMFAB_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "llmfab", "train", "run", "--spec", str(spec_file)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert f"error: {field}:" in out.stderr and "Traceback" not in out.stderr
    status = json.loads((tmp_path / "home" / "runs" / "x.status.json").read_text())
    assert status["phase"] == "Failed" and status["conditions"][0]["reason"] == "NotSupported"
