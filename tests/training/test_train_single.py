"""One process: the TrainingRun stage trains, exports, reports, resumes and refuses bad input."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from llmfab.model import losses
from llmfab.workload import run_stage

from .conftest import read_metrics

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _status(home: Path, name: str = "tiny-run") -> dict:
    return json.loads((home / "runs" / f"{name}.status.json").read_text())


def test_training_lowers_the_loss_exports_the_model_and_reports(
    home: Path, write_spec: Callable[..., Path]
) -> None:
    assert run_stage("train", write_spec()) == 0
    run = home / "runs" / "tiny-run"
    metrics = read_metrics(run)
    assert sorted(metrics) == list(range(1, 31))
    assert metrics[30]["loss"] < metrics[1]["loss"] - 1.5
    assert metrics[30]["val_loss"] < metrics[10]["val_loss"]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 300
    assert (run / "model" / "tokenizer.json").is_file()
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-00000020", "step-00000030"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["steps"] == 30 and manifest["tokens"] == 30 * 256 and manifest["specHash"]
    status = _status(home)
    assert status["phase"] == "Succeeded"
    assert status["step"] == status["totalSteps"] == 30
    assert status["loss"] == pytest.approx(metrics[30]["loss"])
    assert status["parameters"] > 0 and status["tokensPerSecond"] > 0
    assert status["lastCheckpoint"].endswith("step-00000030")
    assert 1 < status["eval"]["valPerplexity"] < 300 and status["eval"]["testPerplexity"] > 1
    # Same spec again: nothing to do.
    assert run_stage("train", write_spec()) == 0
    assert len(read_metrics(run)) == 30


def test_extending_max_steps_resumes_from_the_last_checkpoint(
    home: Path, write_spec: Callable[..., Path]
) -> None:
    assert run_stage("train", write_spec(maxSteps=10)) == 0
    assert run_stage("train", write_spec(maxSteps=14)) == 0
    run = home / "runs" / "tiny-run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [*range(1, 11), *range(11, 15)]
    events = (home / "runs" / "tiny-run.events.jsonl").read_text()
    assert "resumed from step-00000010" in events


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    home: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = losses.chunked_cross_entropy
    calls = {"train": 0}

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        loss = real(*args, **kwargs)
        if torch.is_grad_enabled():
            calls["train"] += 1
            if calls["train"] > 12:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(losses, "chunked_cross_entropy", poisoned)
    assert run_stage("train", write_spec()) == 1
    run = home / "runs" / "tiny-run"
    status = _status(home)
    assert status["phase"] == "Failed"
    assert "step 13: loss nan" in status["message"]
    assert "step-00000010" in status["message"] and "spec.optimizer.lr" in status["message"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000010"]
    assert not (run / "manifest.json").exists() and not (run / "model").exists()


def test_ctrl_c_during_a_checkpoint_save_is_reported_as_interrupted(
    home: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DCP wraps a Ctrl-C in its own BaseException; the status must still say Interrupted."""
    from torch.distributed.checkpoint import FileSystemWriter

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(FileSystemWriter, "write_data", interrupted)
    assert run_stage("train", write_spec()) == 130
    status = _status(home)
    assert status["phase"] == "Failed" and status["conditions"][0]["reason"] == "Interrupted"
    assert not (home / "runs" / "tiny-run" / "manifest.json").exists()


def _out_of_memory_once_at(step_call: int, above: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the ``step_call``-th training step fail with a CUDA-style OOM while micro-batches exceed
    ``above`` sequences; return the micro-batch sizes every step call used."""
    from llmfab.training.loop import trainer

    real, seen = trainer.train_step, []

    def step(parts, batch, plan, spec, env):  # type: ignore[no-untyped-def]
        seen.append(plan.sizes[0])
        if len(seen) >= step_call and plan.sizes[0] > above:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(parts, batch, plan, spec, env)

    monkeypatch.setattr(trainer, "train_step", step)
    return seen


def test_out_of_memory_mid_run_halves_the_micro_batch_keeps_the_global_batch_and_remembers(
    home: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _out_of_memory_once_at(5, above=4, monkeypatch=monkeypatch)
    spec = write_spec(maxSteps=8, batch={"globalTokens": 32 * 8, "maxMicroBatchSize": 8})
    assert run_stage("train", spec) == 0
    assert seen[:5] == [8, 8, 8, 8, 8] and set(seen[5:]) == {4}  # step 5 retried at half the size
    assert sorted(read_metrics(home / "runs" / "tiny-run")) == list(range(1, 9))  # no step lost or doubled
    events = (home / "runs" / "tiny-run.events.jsonl").read_text()
    assert "out of memory at step 5; micro-batch now 4" in events
    cap = json.loads((home / "runs" / "tiny-run" / "micro-batch.json").read_text())
    assert cap["microBatch"] == 4

    seen.clear()  # a longer run resumes at the recorded size instead of failing again
    assert run_stage("train", write_spec(maxSteps=12, batch={"globalTokens": 32 * 8, "maxMicroBatchSize": 8})) == 0
    assert set(seen) == {4}
    assert "an earlier out-of-memory capped it at 4" in (home / "runs" / "tiny-run.events.jsonl").read_text()


def test_out_of_memory_at_one_sequence_fails_with_the_fix(
    home: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _out_of_memory_once_at(1, above=0, monkeypatch=monkeypatch)
    assert run_stage("train", write_spec(maxSteps=4, batch={"globalTokens": 32 * 8, "microBatchSize": 1})) == 1
    message = _status(home)["message"]
    assert "step 1" in message and "spec.activationCheckpointing.mode: full" in message


def test_missing_dataset_waits_with_a_clear_status(home: Path, write_spec: Callable[..., Path]) -> None:
    shutil.rmtree(home / "datasets" / "tiny")
    assert run_stage("train", write_spec()) == 3
    status = _status(home)
    assert status["phase"] == "Waiting"
    assert "waiting for Dataset/tiny" in status["message"]


def test_vocabulary_mismatch_between_manifest_and_tokenizer_is_refused(
    home: Path, write_spec: Callable[..., Path]
) -> None:
    manifest_file = home / "datasets" / "tiny" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["vocabSize"] = 512
    manifest_file.write_text(json.dumps(manifest))
    assert run_stage("train", write_spec()) == 1
    message = _status(home)["message"]
    assert "spec.dataset.name: Dataset/tiny manifest says vocabSize 512" in message
    assert "rebuild the Dataset" in message


def test_checkpoint_of_a_different_model_shape_is_refused(
    home: Path, write_spec: Callable[..., Path]
) -> None:
    assert run_stage("train", write_spec(maxSteps=10)) == 0
    changed = write_spec(maxSteps=12, model={"layers": 2, "hidden": 96, "heads": 4, "contextLength": 32})
    assert run_stage("train", changed) == 1
    message = _status(home)["message"]
    assert (
        "spec.model: hidden is 96 but the checkpoint was trained with 64" in message
        and "delete" in message
        and "checkpoints" in message
    )
    assert not (home / "runs" / "tiny-run" / "manifest.json").exists()


def test_activation_checkpointing_and_bf16_train_the_same_model(
    home: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMFAB_CPU_BF16", "force")  # bf16 compute even where this CPU emulates it
    spec = write_spec(
        maxSteps=6,
        precision="bf16",
        activationCheckpointing={"mode": "selective", "every": 2},
        batch={"globalTokens": 32 * 8, "microBatchSize": 3},
    )
    assert run_stage("train", spec) == 0
    metrics = read_metrics(home / "runs" / "tiny-run")
    assert metrics[6]["loss"] < metrics[1]["loss"]


def test_bf16_on_a_cpu_without_native_bf16_computes_in_fp32_and_says_so(
    home: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMFAB_CPU_BF16", "off")
    assert run_stage("train", write_spec(maxSteps=2, precision="bf16")) == 0
    events = [json.loads(x) for x in (home / "runs" / "tiny-run.events.jsonl").read_text().splitlines()]
    fallback = [e for e in events if e["reason"] == "PrecisionFallback"]
    assert fallback and fallback[0]["type"] == "Warning" and "precision: fp32" in fallback[0]["message"]
