"""Minitron width pruning: activation importance finds what is inactive on the calibration data,
whole GQA groups go, and the smaller model (heads · head_dim < hidden) exports as a Llama that
transformers computes identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmfab.compress.post_training_pruning import prune_mlp_channels
from llmfab.compress.width_pruning import activation_importance, prune_width, top
from llmfab.model.hf import export_hf, load_hf
from llmfab.model.transformer import Transformer

from .conftest import tiny_args

HALF = 16  # hidden 32: the calibration tokens live in dims 0..15, the planted units read only 16..31
CALIBRATION_IDS = 48  # token ids 0..47 are the calibration data; 48.. also use the other dims
PLANTED_CHANNELS = (3, 10, 40)


def _planted_model(sharing_groups: int = 3) -> tuple[Transformer, list[int]]:
    """A model whose planted MLP channels and GQA group (one per block) are exactly zero on tokens
    0..47, although their weights are the largest of the model (a weight criterion keeps them)."""
    torch.manual_seed(0)
    args = tiny_args(kv_heads=2, sharing_groups=sharing_groups)  # 4 heads in 2 groups of 2, head_dim 8
    model = Transformer(args)
    planted_groups = []
    with torch.no_grad():
        model.embed.weight[:CALIBRATION_IDS, HALF:] = 0.0
        d, q = args.head_dim, args.heads * args.head_dim
        for b, block in enumerate(model.blocks):
            block.attn.proj.weight[HALF:] = 0.0  # every write to the residual stream stays in dims 0..15
            block.mlp.down.weight[HALF:] = 0.0
            gate_up = block.mlp.gate_up.weight
            for j in PLANTED_CHANNELS:
                for row in (j, args.intermediate + j):  # gate and up rows of channel j
                    gate_up[row, :HALF] = 0.0
                    gate_up[row, HALF:] *= 20.0
            g = b % args.kv_heads
            planted_groups.append(g)
            v_rows = slice(q + args.kv_heads * d + g * d, q + args.kv_heads * d + (g + 1) * d)
            block.attn.qkv.weight[v_rows, :HALF] = 0.0
            block.attn.qkv.weight[v_rows, HALF:] *= 20.0
            block.attn.proj.weight[:, 2 * g * d:(2 * g + 2) * d] *= 20.0  # the group's two query heads
    return model.eval(), planted_groups


def _calibration(batches: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, CALIBRATION_IDS, (4, 16), generator=g) for _ in range(batches)]


@pytest.mark.parametrize("sharing_groups", [3, 2])
def test_activation_importance_prunes_the_planted_channels_and_group_and_changes_nothing_on_the_data(
    sharing_groups: int,
) -> None:
    model, planted_groups = _planted_model(sharing_groups)
    args = model.args
    importance = activation_importance(model, _calibration())
    keep = args.intermediate - len(PLANTED_CHANNELS)
    for b in range(sharing_groups):
        assert set(PLANTED_CHANNELS).isdisjoint(top(importance.mlp[b], keep).tolist())
        assert top(importance.groups(args)[b], 1).tolist() == [1 - planted_groups[b]]
    state, small = prune_width(model.state_dict(), args, importance, intermediate=keep, heads=2)
    assert (small.heads, small.kv_heads, small.head_dim, small.intermediate) == (2, 1, 8, keep)
    pruned = Transformer(small)
    pruned.load_state_dict(state)
    tokens = torch.randint(0, CALIBRATION_IDS, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval().logits(tokens), model.logits(tokens), rtol=1e-5, atol=1e-5)
        other = torch.randint(CALIBRATION_IDS, args.vocab_size, (2, 16))  # the planted units matter here
        assert (pruned.logits(other) - model.logits(other)).abs().max() > 1e-2
    # The magnitude criterion, on the same model, keeps the planted channels: their weights are large.
    magnitude, _ = prune_mlp_channels(model.state_dict(), args, 0.0, keep=keep)
    kept_rows = magnitude["blocks.0.mlp.gate_up.weight"][:keep]
    original = model.blocks[0].mlp.gate_up.weight[:args.intermediate]
    assert all(any(torch.equal(row, original[j]) for row in kept_rows) for j in PLANTED_CHANNELS)


def test_importance_is_the_l2_over_sequences_of_the_mean_over_tokens() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_args(kv_heads=2)).eval()
    a = model.args
    batches = _calibration(2)
    importance = activation_importance(model, batches)
    tokens = torch.cat(batches)
    with torch.no_grad():
        x = model.embed(tokens)
        cos, sin = model.rope_cos[:16, None, :], model.rope_sin[:16, None, :]
        block = model.blocks[0]
        inner = block.attn_norm(x)
        captured: list[torch.Tensor] = []
        handle = block.attn.proj.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
        x = x + block.attn(inner, cos, sin)
        handle.remove()
        gate, up = block.mlp.gate_up(block.mlp_norm(x)).chunk(2, dim=-1)
        activation = F.silu(gate) * up  # [sequences, T, intermediate]
    torch.testing.assert_close(importance.mlp[0], activation.abs().mean(dim=1).norm(dim=0))
    heads = captured[0].view(*captured[0].shape[:2], a.heads, a.head_dim).norm(dim=-1)
    torch.testing.assert_close(importance.heads[0], heads.mean(dim=1).norm(dim=0))
    torch.testing.assert_close(importance.groups(a)[0], importance.heads[0].view(2, 2).norm(dim=1))


def test_head_pruned_export_is_a_llama_with_head_dim_whose_logits_equal_llmfabs(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    model, _ = _planted_model()
    state, small = prune_width(model.state_dict(), model.args, activation_importance(model, _calibration()),
                               intermediate=32, heads=2)
    pruned = Transformer(small)
    pruned.load_state_dict(state)
    out = export_hf(state, small, tokenizer_dir, tmp_path / "model", dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"],
            config["head_dim"], config["intermediate_size"]) == (32, 2, 1, 8, 32)
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tokens = torch.randint(0, small.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, pruned.eval().logits(tokens), rtol=1e-4, atol=1e-4)
    # llmfab reads it back too (initFrom, a distillation teacher): head_dim comes from the config.
    reloaded, args = load_hf(out)
    assert (args.heads, args.kv_heads, args.head_dim) == (2, 1, 8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval().logits(tokens), pruned.logits(tokens), rtol=1e-5, atol=1e-5)


def test_prune_width_refuses_a_head_count_that_splits_a_gqa_group() -> None:
    model = Transformer(tiny_args(kv_heads=2))
    importance = activation_importance(model, _calibration(1))
    with pytest.raises(ValueError, match="heads: 3 must be a multiple of the GQA group size 2"):
        prune_width(model.state_dict(), model.args, importance, intermediate=32, heads=3)


def test_model_args_with_an_explicit_head_dim_need_not_divide_hidden() -> None:
    args = tiny_args(heads=3, kv_heads=1, head_dim=8)
    assert args.head_dim == 8 and Transformer(args).blocks[0].attn.proj.weight.shape == (32, 24)
    assert tiny_args().head_dim == 8
    with pytest.raises(ValueError, match="hidden \\(32\\) must be divisible by heads \\(3\\)"):
        tiny_args(heads=3, kv_heads=1)
    with pytest.raises(ValueError, match="head size \\(7\\) must be even"):
        tiny_args(head_dim=7)
