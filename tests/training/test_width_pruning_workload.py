"""spec.pruning with structure width: heads and MLP channels pruned after training, a short
distillation recovery from the unpruned model, an export transformers loads, and bad sizes refused
before any training."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from llmfab.workload import run_stage

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _status(home: Path, name: str = "tiny-run") -> dict:
    return json.loads((home / "runs" / f"{name}.status.json").read_text())


def test_width_pruning_with_recovery_lowers_the_pruned_loss_and_exports_the_reported_model(
    home: Path, write_spec: Callable[..., Path]
) -> None:
    from transformers import AutoModelForCausalLM

    from llmfab.data.shards import DatasetInfo
    from llmfab.data.token_windows import validation_batches
    from llmfab.model.losses import chunked_cross_entropy

    pruning = {"enabled": True, "structure": "width", "heads": 2, "intermediate": 64, "recoverySteps": 20,
               "calibrationSamples": 16}
    assert run_stage("train", write_spec(pruning=pruning, maxSteps=30)) == 0
    status = _status(home)
    p = status["pruning"]
    assert (p["method"], p["heads"], p["kvHeads"], p["headDim"], p["intermediateSize"]) == ("activation", 2, 2, 16, 64)
    # 2 blocks lose 2 heads (q, k, v rows and proj columns: 4 · 16 · 64 each) and 128 channels (3 · 64 each).
    assert p["parametersBefore"] - p["parametersAfter"] == 2 * (2 * 4 * 16 * 64 + 128 * 3 * 64)
    assert p["valLossBefore"] < p["valLossPruned"]
    assert p["valLossAfter"] < p["valLossPruned"] - 0.02, p  # the recovery helps
    assert p["valPerplexityAfter"] == pytest.approx(torch.tensor(p["valLossAfter"]).exp().item())

    model_dir = home / "runs" / "tiny-run" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["num_attention_heads"], config["head_dim"], config["hidden_size"]) == (2, 16, 64)
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    batches = validation_batches(DatasetInfo.load(home / "datasets" / "tiny").split("val"), 32, 8, 2, 0, 1)
    with torch.no_grad():
        losses = [float(chunked_cross_entropy(hf.model(b[:, :-1]).last_hidden_state, hf.lm_head.weight, b[:, 1:]))
                  for b in batches]
    assert sum(losses) / len(losses) == pytest.approx(p["valLossAfter"], rel=1e-4)  # the status is the export's


@pytest.mark.parametrize(("pruning", "model", "message"), [
    ({"structure": "width", "heads": 3}, {"kvHeads": 2},
     "spec.pruning.heads: 3 is not a multiple of the GQA group size heads/kvHeads = 2 (whole groups are pruned); "
     "use one of [2, 4]"),
    ({"structure": "width", "heads": 8}, {}, "spec.pruning.heads: 8 exceeds the model's spec.model.heads (4)"),
    ({"structure": "mlp", "intermediate": 100}, {},
     "spec.pruning.intermediate: 100 is not a multiple of 64 (the model's 192 is, and the 4-bit quantizer's "
     "groups need it); use 64 or 128"),
    ({"structure": "mlp", "targetParameters": 30000}, {},
     "spec.pruning.targetParameters: 30000 is below the smallest model this can reach"),
    ({"structure": "mlp", "targetParameters": 10**9}, {}, "spec.pruning.targetParameters: 1000000000 is not below"),
    ({"structure": "width", "intermediate": 192}, {}, "spec.pruning: heads 4 and intermediate 192 are the model's own"),
])
def test_a_pruned_size_that_cannot_be_built_fails_before_training_naming_the_field(
    home: Path, write_spec: Callable[..., Path], pruning: dict, model: dict, message: str
) -> None:
    assert run_stage("train", write_spec(pruning={"enabled": True, **pruning}, model=model)) == 1
    assert message in _status(home)["message"]
    assert not (home / "runs" / "tiny-run" / "checkpoints").exists()  # refused before the first step


def test_target_parameters_picks_the_largest_aligned_intermediate_that_fits(
    home: Path, write_spec: Callable[..., Path]
) -> None:
    # 2 blocks × 3 × 64 = 384 parameters per MLP channel: intermediate 192 has 126_016, 128 has 101_440.
    pruning = {"enabled": True, "structure": "mlp", "targetParameters": 101_440 - 1}
    assert run_stage("train", write_spec(pruning=pruning, maxSteps=5)) == 0
    p = _status(home)["pruning"]
    assert p["intermediateSize"] == 64 and p["parametersAfter"] <= pruning["targetParameters"]


def test_unstructured_recovery_keeps_the_zeros(home: Path, write_spec: Callable[..., Path]) -> None:
    pruning = {"enabled": True, "sparsity": 0.5, "recoverySteps": 5}
    assert run_stage("train", write_spec(pruning=pruning, maxSteps=10)) == 0
    p = _status(home)["pruning"]
    assert p["sparsity"] == pytest.approx(0.5, abs=0.01) and p["valLossAfter"] < p["valLossPruned"]
