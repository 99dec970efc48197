"""Magnitude pruning: the requested fraction of the smallest block weights, or a 2:4 pattern."""

from __future__ import annotations

import pytest
import torch

from llmfab.api.training_run import PruningSpec
from llmfab.compress.pruning import apply_masks, magnitude_mask, prune_model, sparsity
from llmfab.model.transformer import Transformer

from .conftest import tiny_args


def test_unstructured_pruning_zeroes_the_smallest_weights() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_args())
    before = model.blocks[0].mlp.down.weight.detach().clone()
    embed = model.embed.weight.detach().clone()
    masks = prune_model(model, PruningSpec(enabled=True, sparsity=0.6))
    assert sparsity(model) == pytest.approx(0.6, abs=0.01)
    after = model.blocks[0].mlp.down.weight
    kept, dropped = before[after != 0].abs(), before[after == 0].abs()
    assert kept.min() >= dropped.max()
    assert torch.equal(model.embed.weight, embed)  # embedding/head and norms untouched
    assert len(masks) == 3 * 4


def test_two_four_keeps_the_two_largest_of_every_four() -> None:
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -1.0, 1.5]])
    mask = magnitude_mask(w, 0.5, "2:4")
    assert mask.tolist() == [[False, True, True, False, True, False, False, True]]
    torch.manual_seed(0)
    model = Transformer(tiny_args())
    prune_model(model, PruningSpec(enabled=True, structure="2:4"))
    groups = model.blocks[1].attn.qkv.weight.reshape(-1, 4)
    assert torch.all((groups != 0).sum(dim=1) <= 2)
    assert sparsity(model) == pytest.approx(0.5, abs=0.01)


def test_masks_keep_pruned_weights_at_zero_after_an_update() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny_args())
    masks = prune_model(model, PruningSpec(enabled=True, sparsity=0.5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    apply_masks(model, masks)
    assert sparsity(model) == pytest.approx(0.5, abs=0.01)
