"""spec.pruning: the trained model is pruned before the export, and status says what it cost."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from llmfab.api.training_run import TrainingRunSpec
from llmfab.compress.post_training_pruning import kept_channels, prune_mlp_channels, validation_loss
from llmfab.model.hf import export_hf, load_hf
from llmfab.model.transformer import ModelArgs, Transformer
from llmfab.workload import run_stage

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _status(home: Path, name: str = "tiny-run") -> dict:
    return json.loads((home / "runs" / f"{name}.status.json").read_text())


def test_mlp_pruning_keeps_the_channels_with_the_largest_norms() -> None:
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=40, layers=2, hidden=16, heads=2, kv_heads=2, intermediate=12, context_length=8,
                     sharing_groups=2)
    state = Transformer(args).state_dict()
    state["blocks.1.mlp.down.weight"][:, 5] *= 100.0  # channel 5 of block 1 dominates
    state["blocks.1.mlp.down.weight"][:, 7] = 0.0  # channel 7 of block 1 does nothing
    pruned, new_args = prune_mlp_channels(state, args, 0.25)
    assert new_args.intermediate == 9
    assert pruned["blocks.1.mlp.gate_up.weight"].shape == (18, 16) and pruned["blocks.1.mlp.down.weight"].shape == (16, 9)
    kept = [int(torch.nonzero((state["blocks.1.mlp.down.weight"].t() == col).all(1))[0]) for col in
            pruned["blocks.1.mlp.down.weight"].t()]
    assert 5 in kept and 7 not in kept and kept == sorted(kept)


def test_pruned_export_is_a_smaller_llama_whose_logits_equal_llmfabs(
    home: Path, write_spec: Callable[..., Path]
) -> None:
    from transformers import AutoModelForCausalLM

    pruning = {"enabled": True, "structure": "mlp", "sparsity": 0.5}
    assert run_stage("train", write_spec(pruning=pruning, maxSteps=20)) == 0
    status = _status(home)
    p = status["pruning"]
    spec = TrainingRunSpec.model_validate(json.loads(json.dumps(
        {"dataset": {"name": "tiny"}, "release": {"license": "apache-2.0"},
         "model": {"layers": 2, "hidden": 64, "heads": 4, "contextLength": 32}})))
    full = spec.model.intermediate_size()
    assert (full, p["intermediateSize"]) == (192, 64)  # 50% of 192 is 96: rounded down to a multiple of 64
    assert p["parametersAfter"] < p["parametersBefore"] == status["parameters"]
    assert p["parametersBefore"] - p["parametersAfter"] == 2 * 3 * 64 * (full - p["intermediateSize"])
    assert 1 < p["valPerplexityBefore"] < p["valPerplexityAfter"] < 1000
    model_dir = home / "runs" / "tiny-run" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["intermediate_size"] == p["intermediateSize"]

    llmfab_model, args = load_hf(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tokens = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, llmfab_model.logits(tokens), rtol=1e-4, atol=1e-4)
    # The reported "after" number is the exported model's.
    from llmfab.data.shards import DatasetInfo
    from llmfab.data.token_windows import validation_batches

    batches = validation_batches(DatasetInfo.load(home / "datasets" / "tiny").split("val"), 32, 8, 2, 0, 1)
    assert validation_loss(llmfab_model.state_dict(), args, batches, spec) == pytest.approx(p["valLossAfter"], rel=1e-5)
    from huggingface_hub import ModelCard

    card = ModelCard.load(model_dir / "README.md").text  # what pruning cost, as status has it
    assert f"Pruned (mlp, {p['method']}): {p['parametersBefore']:,} -> {p['parametersAfter']:,} parameters" in card
    assert f"{p['valPerplexityAfter']:,.4g} after" in card


def test_unstructured_pruning_exports_zeros_in_the_same_shapes(home: Path, write_spec: Callable[..., Path]) -> None:
    from safetensors.torch import load_file

    assert run_stage("train", write_spec(pruning={"enabled": True, "sparsity": 0.5}, maxSteps=10)) == 0
    p = _status(home)["pruning"]
    assert p["sparsity"] == pytest.approx(0.5, abs=0.01) and p["parametersAfter"] == p["parametersBefore"]
    weights = load_file(str(home / "runs" / "tiny-run" / "model" / "model.safetensors"))
    down = weights["model.layers.0.mlp.down_proj.weight"]
    assert (down == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_kept_channels_remove_at_least_the_share_and_keep_multiples_of_64() -> None:
    assert [kept_channels(192, s) for s in (0.1, 0.5, 0.9)] == [128, 64, 19]
    assert kept_channels(12, 0.25) == 9 and kept_channels(1024, 0.3) == 704


def test_export_helper_round_trips_a_pruned_shape(tmp_path: Path, dataset_template: Path) -> None:
    args = ModelArgs(vocab_size=300, layers=1, hidden=16, heads=2, kv_heads=2, intermediate=12, context_length=8,
                     sharing_groups=1)
    state, small = prune_mlp_channels(Transformer(args).state_dict(), args, 0.5)
    export_hf(state, small, dataset_template / "tokenizer", tmp_path / "m", dtype="float32")
    assert load_hf(tmp_path / "m")[1].intermediate == 6
