"""Structured width pruning, Minitron-style: rank MLP channels and attention heads by their activations
on calibration sequences, keep the top ones in every block.

Importance (Muralidharan et al., 2024, "Compact Language Models via Pruning and Knowledge
Distillation", §2.2; the recipe of Sreenivas et al., 2024, "LLM Pruning and Distillation in Practice:
The Minitron Approach"), from forward pre-hooks, so the model is not changed to be measured:

- MLP channel j: |a_j|, where a = silu(gate(x)) · up(x) is the input of ``down`` (SwiGLU's
  intermediate activation; the paper's "neuron" is a row of the first MLP matrix).
- attention head h: ‖y_h‖₂ over its head_dim values, y_h being the head's attention output before
  ``proj``.

Aggregation over the calibration data: the mean over the tokens of each sequence, then the L2 norm
over the sequences (batch: L2, sequence: mean), the combination the paper's ablation found best. A
block shared by several layers (ALBERT-style) adds up its applications within a sequence.

GQA: the query heads that share one key/value head form a group, and whole groups are pruned (the
query heads with their k/v head), ranked by the L2 norm of their heads' importances. The group size
heads/kv_heads stays, so the kept config is valid and the mapping of query head i to kv head
i // group that HF and vLLM use still holds. With multi-head attention a group is one head.

Every block keeps the same counts (its own top ones, in their original order), so the result is a
plain ``ModelArgs`` with a smaller ``intermediate`` and ``heads``/``kv_heads``; ``head_dim`` is
kept explicitly, since heads · head_dim < hidden once heads are gone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import cast

import torch
from torch import nn

from llmfab.model.transformer import Block, ModelArgs, Transformer

Hook = Callable[[nn.Module, tuple[torch.Tensor, ...]], None]


@dataclasses.dataclass
class Importance:
    """Per distinct block: ``mlp`` [intermediate] and ``heads`` [heads] scores (larger = keep)."""

    mlp: list[torch.Tensor]
    heads: list[torch.Tensor]

    def groups(self, args: ModelArgs) -> list[torch.Tensor]:
        """Per block: the score of each GQA group [kv_heads] (L2 norm of its query heads' scores)."""
        size = args.heads // args.kv_heads
        return [h.view(args.kv_heads, size).norm(dim=1) for h in self.heads]


@torch.no_grad()
def activation_importance(model: Transformer, batches: Iterable[torch.Tensor]) -> Importance:
    """Run ``model`` on ``batches`` ([B, T] tokens) and score every MLP channel and head of every block."""
    a = model.args
    blocks = [cast(Block, block) for block in model.blocks]
    # Per sequence of the current batch (sums over a shared block's applications), and over all batches.
    per_sequence: dict[tuple[str, int], torch.Tensor] = {}
    squared: dict[tuple[str, int], torch.Tensor] = {}

    def add(key: tuple[str, int], scores: torch.Tensor) -> None:
        per_sequence[key] = per_sequence[key] + scores if key in per_sequence else scores

    def mlp_hook(index: int) -> Hook:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            add(("mlp", index), inputs[0].float().abs().mean(dim=1))  # [B, T, I] -> [B, I]
        return hook

    def head_hook(index: int) -> Hook:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            y = inputs[0].float()  # [B, T, heads · head_dim]
            add(("heads", index), y.view(*y.shape[:2], a.heads, a.head_dim).norm(dim=-1).mean(dim=1))  # [B, heads]
        return hook

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.mlp.down.register_forward_pre_hook(mlp_hook(i)))
        handles.append(block.attn.proj.register_forward_pre_hook(head_hook(i)))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            per_sequence.clear()
            model(batch.to(device))
            for key, scores in per_sequence.items():
                total = scores.pow(2).sum(dim=0)
                squared[key] = squared[key] + total if key in squared else total
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not squared:
        raise ValueError("activation_importance: no calibration batches")
    return Importance(mlp=[squared[("mlp", i)].sqrt().cpu() for i in range(len(blocks))],
                      heads=[squared[("heads", i)].sqrt().cpu() for i in range(len(blocks))])


def top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` largest scores, in their original order (ties: the lower index)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:keep].sort().values


@torch.no_grad()
def slice_block_mlp(state: dict[str, torch.Tensor], block: int, channels: torch.Tensor) -> None:
    """Keep ``channels`` of block ``block``'s MLP in ``state`` (in place)."""
    b = f"blocks.{block}.mlp."
    gate, up = state[b + "gate_up.weight"].chunk(2)  # [I, H] each
    state[b + "gate_up.weight"] = torch.cat([gate[channels], up[channels]]).contiguous()
    state[b + "down.weight"] = state[b + "down.weight"][:, channels].contiguous()


@torch.no_grad()
def slice_block_heads(state: dict[str, torch.Tensor], block: int, args: ModelArgs, groups: torch.Tensor) -> None:
    """Keep the GQA ``groups`` (kv head indices) of block ``block``'s attention in ``state`` (in place)."""
    b = f"blocks.{block}.attn."
    d, size = args.head_dim, args.heads // args.kv_heads
    q, k, v = torch.split(state[b + "qkv.weight"], [args.heads * d, args.kv_heads * d, args.kv_heads * d])
    q_heads = (groups[:, None] * size + torch.arange(size)).flatten()

    def rows(weight: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        return weight.view(-1, d, weight.shape[-1])[heads].reshape(-1, weight.shape[-1])

    state[b + "qkv.weight"] = torch.cat([rows(q, q_heads), rows(k, groups), rows(v, groups)]).contiguous()
    proj = state[b + "proj.weight"]  # [hidden, heads · d]: columns per query head
    state[b + "proj.weight"] = proj.view(proj.shape[0], args.heads, d)[:, q_heads].reshape(proj.shape[0], -1).contiguous()


def prune_width(state: dict[str, torch.Tensor], args: ModelArgs, importance: Importance, *, intermediate: int,
                heads: int) -> tuple[dict[str, torch.Tensor], ModelArgs]:
    """(state, args) with every block cut to its ``intermediate`` most important MLP channels and its
    ``heads`` most important query heads (``heads // group size`` whole GQA groups)."""
    size = args.heads // args.kv_heads
    if not 1 <= heads <= args.heads or heads % size:
        raise ValueError(f"heads: {heads} must be a multiple of the GQA group size {size} in 1..{args.heads}")
    if not 1 <= intermediate <= args.intermediate:
        raise ValueError(f"intermediate: {intermediate} must be in 1..{args.intermediate}")
    out = dict(state)
    group_scores = importance.groups(args)
    for block in range(args.sharing_groups):
        slice_block_mlp(out, block, top(importance.mlp[block], intermediate))
        if heads < args.heads:
            slice_block_heads(out, block, args, top(group_scores[block], heads // size))
    pruned = dataclasses.replace(args, intermediate=intermediate, heads=heads, kv_heads=heads // size,
                                 head_dim=args.head_dim)
    return out, pruned
