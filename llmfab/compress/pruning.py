"""Magnitude pruning of the blocks' Linear weights, unstructured or 2:4 (``spec.pruning``).

Only the projections inside the blocks are pruned; the embedding/head and the norms are kept whole
(pruning the tied embedding removes whole token directions and costs far more quality per zero).

- unstructured: per weight matrix, the ``sparsity`` fraction with the smallest |w| is zeroed.
- 2:4: in every group of 4 consecutive weights along the input dimension, the 2 smallest are
  zeroed (50% sparsity, the pattern sparse tensor cores accelerate). Groups run along rows, so the
  pattern survives the export's row split of fused q/k/v and gate/up.

``prune_model`` returns the masks; during fine-tuning after pruning, ``apply_masks`` after every
optimizer step keeps pruned weights at zero.
"""

from __future__ import annotations

import torch
from torch import nn

from llmfab.api.training_run import PruningSpec


def magnitude_mask(weight: torch.Tensor, sparsity: float, structure: str) -> torch.Tensor:
    """Boolean keep-mask of ``weight`` (True = kept)."""
    w = weight.detach().abs().float()
    if structure == "2:4":
        if w.shape[-1] % 4:
            raise ValueError(f"pruning.structure: 2:4 needs an input size divisible by 4, got {w.shape[-1]}")
        groups = w.reshape(-1, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, groups.topk(2, dim=1).indices, True)
        return keep.view(weight.shape)
    if structure != "unstructured":
        raise ValueError(f"pruning.structure: {structure!r} is unknown; use 'unstructured' or '2:4'")
    drop = round(sparsity * w.numel())
    if drop == 0:
        return torch.ones_like(w, dtype=torch.bool)
    threshold = w.flatten().kthvalue(drop).values
    return w > threshold


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The Linear weights inside ``model.blocks`` (each shared block once)."""
    blocks: nn.Module = model.blocks  # type: ignore[assignment]
    return {f"blocks.{name}.weight": m.weight for name, m in blocks.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def prune_model(model: nn.Module, spec: PruningSpec) -> dict[str, torch.Tensor]:
    """Zero the smallest weights in place; returns {parameter name: keep-mask}."""
    masks = {}
    for name, weight in prunable_weights(model).items():
        mask = magnitude_mask(weight, spec.sparsity, spec.structure)
        weight.mul_(mask)
        masks[name] = mask
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    weights = prunable_weights(model)
    for name, mask in masks.items():
        weights[name].mul_(mask)


def sparsity(model: nn.Module) -> float:
    """Fraction of zeros among the prunable weights."""
    weights = list(prunable_weights(model).values())
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))
