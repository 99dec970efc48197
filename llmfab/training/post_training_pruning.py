"""``spec.pruning.enabled``: prune the trained weights before the export, and measure what it cost.

- ``structure: mlp``: structured. In each block the ``sparsity`` share of the MLP's intermediate
  channels with the smallest importance is removed (``kept_channels`` rounds); importance of channel j is
  ‖gate_j‖₂ · ‖up_j‖₂ · ‖down_:,j‖₂ (the magnitude criterion of LLM-Pruner's "element" variant,
  Ma et al., 2023, reduced to norms). Every block keeps the same count, so the export is an
  ordinary, smaller ``LlamaForCausalLM`` (``intermediate_size`` reduced) that transformers and
  vLLM load and that is faster as well as smaller.
- ``unstructured`` / ``2:4``: ``pruning.magnitude_mask`` zeroes weights in place; the shapes stay,
  so the export's size does not change (the zeros help compression and 2:4 sparse kernels).

There is no recovery fine-tune: the numbers in status (validation loss before and after on the
same batches, parameter counts) say what pruning cost.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from llmfab.api.training_run import TrainingRunSpec
from llmfab.training import losses
from llmfab.training.export import clean_state_dict
from llmfab.training.model import ModelArgs, Transformer
from llmfab.training.pruning import prune_model, sparsity
from llmfab.training.token_data import validation_batches


def kept_channels(intermediate: int, share_removed: float) -> int:
    """At least ``share_removed`` of the channels go. A size that was a multiple of 64 (as
    ``spec.model`` rounds it) stays one, down to 64, so the 4-bit quantizer's groups still align."""
    kept = max(1, round(intermediate * (1.0 - share_removed)))
    if intermediate % 64 == 0 and kept >= 64:
        kept = kept // 64 * 64
    return kept


@torch.no_grad()
def prune_mlp_channels(state: dict[str, torch.Tensor], args: ModelArgs,
                       share_removed: float) -> tuple[dict[str, torch.Tensor], ModelArgs]:
    """(state, args) with each block's MLP cut to its most important intermediate channels."""
    keep = kept_channels(args.intermediate, share_removed)
    out = dict(state)
    for group in range(args.sharing_groups):
        b = f"blocks.{group}.mlp."
        gate, up = state[b + "gate_up.weight"].chunk(2)  # [I, H] each
        down = state[b + "down.weight"]  # [H, I]
        importance = gate.float().norm(dim=1) * up.float().norm(dim=1) * down.float().norm(dim=0)
        idx = importance.topk(keep).indices.sort().values
        out[b + "gate_up.weight"] = torch.cat([gate[idx], up[idx]]).contiguous()
        out[b + "down.weight"] = down[:, idx].contiguous()
    return out, dataclasses.replace(args, intermediate=keep)


def prune(state: dict[str, torch.Tensor], args: ModelArgs,
          spec: TrainingRunSpec) -> tuple[dict[str, torch.Tensor], ModelArgs, float]:
    """Pruned (state, args) and the share of zeros among the blocks' weights."""
    p = spec.pruning
    if p.structure == "mlp":
        state, args = prune_mlp_channels(state, args, p.sparsity)
        return state, args, 0.0
    model = _model(state, args, torch.device("cpu"))
    prune_model(model, p)
    zeros = sparsity(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, args, zeros


def _model(state: dict[str, torch.Tensor], args: ModelArgs, device: torch.device) -> Transformer:
    model = Transformer(args)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)  # rope tables: not persistent
    return model.to(device).eval()


def _parameters(args: ModelArgs) -> int:
    with torch.device("meta"):
        return Transformer(args).num_parameters()


@torch.no_grad()
def validation_loss(state: dict[str, torch.Tensor], args: ModelArgs, batches: list[torch.Tensor],
                    spec: TrainingRunSpec) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _model(state, args, device)
    total = 0.0
    for batch in batches:
        batch = batch.to(device)
        hidden = model(batch[:, :-1])
        total += float(losses.chunked_cross_entropy(hidden, model.output.weight, batch[:, 1:],
                                                    chunk_tokens=spec.loss_chunk_tokens))
    return total / len(batches)


def prune_trained(state: dict[str, torch.Tensor], args: ModelArgs, spec: TrainingRunSpec,
                  data: Any) -> tuple[dict[str, torch.Tensor], ModelArgs, dict[str, Any]]:
    """Prune the final weights; returns them, their args and the ``status.pruning`` numbers."""
    state = clean_state_dict(state)
    batches = validation_batches(data.split("val"), args.context_length, 8, spec.eval_batches, 0, 1)
    before, parameters_before = validation_loss(state, args, batches, spec), _parameters(args)
    state, args, zeros = prune(state, args, spec)
    after, parameters_after = validation_loss(state, args, batches, spec), _parameters(args)
    report = {
        "structure": spec.pruning.structure, "intermediateSize": args.intermediate,
        "valLossBefore": before, "valLossAfter": after,
        "valPerplexityBefore": math.exp(before), "valPerplexityAfter": math.exp(after),
        "parametersBefore": parameters_before, "parametersAfter": parameters_after, "sparsity": zeros,
    }
    return state, args, report
