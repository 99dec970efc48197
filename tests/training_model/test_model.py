"""The decoder: shapes, causality, GQA, ALBERT sharing, tied head, parameter count, init."""

from __future__ import annotations

import pytest
import torch

from llmfab.api.training_run import ModelSpec
from llmfab.model.from_spec import model_args_from_spec
from llmfab.model.transformer import Transformer

from .conftest import VOCAB, tiny_args


def test_forward_returns_normalised_hidden_and_logits_project_it() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_args())
    tokens = torch.randint(0, VOCAB, (2, 16))
    hidden = model(tokens)
    assert hidden.shape == (2, 16, 32)
    torch.testing.assert_close(model.logits(tokens), hidden @ model.output.weight.T)


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_args(kv_heads=2)).eval()
    a = torch.randint(0, VOCAB, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % VOCAB
    torch.testing.assert_close(model(a)[:, :8], model(b)[:, :8])
    assert not torch.allclose(model(a)[:, 8:], model(b)[:, 8:])


def test_gqa_equals_full_attention_with_repeated_kv_heads() -> None:
    torch.manual_seed(0)
    gqa = Transformer(tiny_args(kv_heads=2))
    full = Transformer(tiny_args(kv_heads=4))
    state = gqa.state_dict()
    d = 8  # head size
    for i in range(3):
        q, k, v = state[f"blocks.{i}.attn.qkv.weight"].split([32, 16, 16])
        rep = [t.view(2, d, 32).repeat_interleave(2, dim=0).reshape(32, 32) for t in (k, v)]
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, *rep])
    full.load_state_dict(state)
    tokens = torch.randint(0, VOCAB, (2, 10))
    torch.testing.assert_close(gqa(tokens), full(tokens))


def test_sharing_keeps_distinct_blocks_applied_cyclically() -> None:
    torch.manual_seed(0)
    shared = Transformer(tiny_args(layers=4, sharing_groups=2))
    assert len(shared.blocks) == 2
    unshared = Transformer(tiny_args(layers=4, sharing_groups=4))
    state = {k: v for k, v in shared.state_dict().items() if not k.startswith("blocks.")}
    for layer in range(4):
        for k, v in shared.blocks[layer % 2].state_dict().items():
            state[f"blocks.{layer}.{k}"] = v
    unshared.load_state_dict(state)
    tokens = torch.randint(0, VOCAB, (2, 10))
    torch.testing.assert_close(shared(tokens), unshared(tokens))


def test_parameter_count_counts_shared_blocks_and_tied_head_once() -> None:
    per_block = sum(p.numel() for p in Transformer(tiny_args(layers=1, sharing_groups=1)).blocks.parameters())
    tied = Transformer(tiny_args(layers=4, sharing_groups=2))
    untied = Transformer(tiny_args(layers=4, sharing_groups=2, tie_embeddings=False))
    embed, norm = VOCAB * 32, 32
    assert tied.num_parameters() == embed + norm + 2 * per_block
    assert untied.num_parameters() == tied.num_parameters() + VOCAB * 32
    assert tied.output.weight is tied.embed.weight


def test_init_scales_residual_projections() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_args(hidden=256, heads=4, kv_heads=4, intermediate=512, layers=8, sharing_groups=8))
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].mlp.down.weight.std().item() - 0.02 / 4) < 0.0005
    assert torch.all(model.norm.weight == 1)


def test_meta_device_build_then_init_weights_matches_a_cpu_build() -> None:
    with torch.device("meta"):
        model = Transformer(tiny_args())
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    reference = Transformer(tiny_args())
    torch.manual_seed(0)
    reference.init_weights()
    assert model.output.weight is model.embed.weight
    tokens = torch.randint(0, VOCAB, (1, 8))
    torch.testing.assert_close(model(tokens), reference(tokens))


def test_model_args_from_spec_reads_shape_and_sharing() -> None:
    spec = ModelSpec.model_validate({"preset": "small", "kvHeads": 4, "sharing": {"groups": 3}})
    args = model_args_from_spec(spec, vocab_size=8000)
    assert (args.layers, args.hidden, args.heads, args.kv_heads, args.sharing_groups) == (6, 512, 8, 4, 3)
    assert args.intermediate == 1408 and args.context_length == 512 and args.tie_embeddings


@pytest.mark.parametrize(("overrides", "message"), [
    ({"hidden": 30}, "divisible by heads"),
    ({"kv_heads": 3}, "kv_heads"),
    ({"sharing_groups": 5}, "sharing_groups"),
])
def test_unsound_shapes_are_refused_with_the_field_named(overrides: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_args(**overrides)


def test_sequence_longer_than_context_is_refused() -> None:
    model = Transformer(tiny_args())
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 17, dtype=torch.long))
