"""`llmfab eval run` end to end through run_stage, on the tiny fixture model and Dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from llmfab.workload import run_stage

EVAL = {
    "dtype": "float32",
    "perplexity": {"stride": 16, "maxTokens": 300},
    "generation": {"samples": 4, "promptTokens": 8, "maxNewTokens": 8},
    "bias": {"categories": ["gender", "age"], "bootstrapSamples": 100, "completionsPerPrompt": 1,
             "completionTokens": 4},
}


def _spec_file(tmp_path: Path, kind: str, name: str, spec: dict) -> Path:
    spec = {"release": {"license": "apache-2.0"}, **spec}  # a run from scratch, a service by path: a licence
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "llmfab.dev/v1alpha1", "kind": kind,
                                    "metadata": {"name": name}, "spec": spec}))
    return path


@pytest.fixture
def home(eval_fixture, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "home"
    shutil.copytree(eval_fixture.dataset_dir, root / "datasets" / "tiny")
    monkeypatch.setenv("LLMFAB_HOME", str(root))
    return root


def _write_run(home: Path, eval_fixture, name: str) -> Path:
    run_dir = home / "runs" / name
    shutil.copytree(eval_fixture.model_dir, run_dir / "model")
    lines = [json.dumps({"step": s, "loss": 6.0 - s / 20, **({"valLoss": 6.1 - s / 20} if s % 10 == 0 else {})})
             for s in range(1, 41)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"step\": 41, \"lo")  # torn last line
    (run_dir / "keep.txt").write_text("not mine")
    (run_dir / "manifest.json").write_text(json.dumps({"kind": "TrainingRun", "dataset": "tiny"}))
    return run_dir


def test_eval_of_a_training_run_writes_eval_json_report_and_status(home, eval_fixture, tmp_path) -> None:
    run_dir = _write_run(home, eval_fixture, "tiny-run")
    spec = _spec_file(tmp_path, "TrainingRun", "tiny-run", {"dataset": {"name": "tiny"}, "eval": EVAL})
    assert run_stage("eval", spec) == 0

    evaluation = json.loads((run_dir / "eval.json").read_text())
    bf16 = evaluation["models"]["bf16"]
    assert set(bf16["perplexity"]) == {"val", "test"}
    assert bf16["perplexity"]["val"]["tokensScored"] == 299
    assert set(bf16["bias"]["minimalPairs"]["categories"]) == {"gender", "age"}
    assert "BLEU" not in bf16["generation"]["bleuSignature"] and "nrefs:1" in bf16["generation"]["bleuSignature"]
    assert len((run_dir / "generations-bf16.jsonl").read_text().splitlines()) == 4
    assert (run_dir / "keep.txt").read_text() == "not mine"
    assert not [p for p in run_dir.iterdir() if ".tmp-" in p.name]

    status = json.loads((home / "runs" / "tiny-run.status.json").read_text())
    assert status["eval"]["model"] == "bf16"
    assert status["eval"]["valPerplexity"] == pytest.approx(bf16["perplexity"]["val"]["perplexity"])
    low, high = status["eval"]["biasStereotypeRateCi95"]
    assert low <= status["eval"]["biasStereotypeRate"] <= high
    assert status["eval"]["report"].endswith("report.html")
    page = (run_dir / "report.html").read_text()
    assert page.count("<svg") == 3 and "validation loss" in page and "http" not in page.split("<body>")[0]

    # Unchanged spec and model: the evaluation is reused, not recomputed.
    before = (run_dir / "eval.json").stat().st_mtime_ns
    assert run_stage("eval", spec) == 0
    assert (run_dir / "eval.json").stat().st_mtime_ns == before


def test_eval_of_a_service_compares_the_bf16_and_4bit_models(home, eval_fixture, tmp_path) -> None:
    _write_run(home, eval_fixture, "src")
    # Stand-in for the quantizer's output: same layout; here the weights are simply the bf16 ones.
    shutil.copytree(eval_fixture.model_dir, home / "services" / "svc" / "model-4bit")
    spec = _spec_file(tmp_path, "InferenceService", "svc", {"model": {"trainingRun": "src"}, "eval": EVAL})
    assert run_stage("eval", spec) == 0
    status = json.loads((home / "services" / "svc.status.json").read_text())
    assert status["eval"]["model"] == "4bit"
    assert status["eval"]["quantizedPerplexityRatio"] == pytest.approx(1.0)
    assert status["bf16ValPerplexity"] == pytest.approx(status["eval"]["valPerplexity"])
    page = (home / "services" / "svc" / "report.html").read_text()
    assert "4-bit / bf16" in page and "4bit perplexity" in page


def test_eval_without_an_exported_model_fails_naming_the_directory(home, tmp_path, capsys) -> None:
    (home / "runs" / "empty").mkdir(parents=True)
    spec = _spec_file(tmp_path, "TrainingRun", "empty", {"dataset": {"name": "tiny"}, "eval": EVAL})
    assert run_stage("eval", spec) == 1
    err = capsys.readouterr().err
    assert "runs/empty/model" in err and "config.json" in err


def test_eval_of_a_run_whose_dataset_is_missing_waits(home, eval_fixture, tmp_path) -> None:
    _write_run(home, eval_fixture, "orphan")
    spec = _spec_file(tmp_path, "TrainingRun", "orphan", {"dataset": {"name": "absent"}, "eval": EVAL})
    assert run_stage("eval", spec) == 3


def test_service_from_a_model_path_without_a_dataset_still_runs_the_bias_probes(home, eval_fixture, tmp_path) -> None:
    spec = _spec_file(tmp_path, "InferenceService", "bare", {
        "model": {"path": str(eval_fixture.model_dir)}, "quantization": {"method": "none"},
        "eval": {**EVAL, "bias": {**EVAL["bias"], "categories": ["age"]}}})
    assert run_stage("eval", spec) == 0
    status = json.loads((home / "services" / "bare.status.json").read_text())
    assert "valPerplexity" not in status["eval"] and "bleu" not in status["eval"]
    assert status["eval"]["model"] == "bf16" and 0 <= status["eval"]["biasStereotypeRate"] <= 1
    events = (home / "services" / "bare.events.jsonl").read_text()
    assert "EvalNoDataset" in events and "calibrationDataset" in events


def test_disabled_eval_writes_nothing(home, eval_fixture, tmp_path) -> None:
    run_dir = _write_run(home, eval_fixture, "off")
    spec = _spec_file(tmp_path, "TrainingRun", "off", {"dataset": {"name": "tiny"}, "eval": {"enabled": False}})
    assert run_stage("eval", spec) == 0
    assert not (run_dir / "eval.json").exists() and not (run_dir / "report.html").exists()
