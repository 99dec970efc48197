"""``spec.pruning.enabled``: prune the trained weights before the export, recover, and measure what it cost.

- ``structure: mlp`` / ``width``, ``method: activation`` (their default): Minitron width pruning
  (``compress/width_pruning.py``): MLP channels (and, with ``width``, whole GQA groups of attention
  heads) ranked by their activations on ``calibrationSamples`` sequences of the training split.
- ``structure: mlp``, ``method: magnitude``: channel j's importance is ‖gate_j‖₂ · ‖up_j‖₂ ·
  ‖down_:,j‖₂ (the magnitude criterion of LLM-Pruner's "element" variant, Ma et al., 2023,
  reduced to norms); no data is read.
- ``unstructured`` / ``2:4``: ``pruning.magnitude_mask`` zeroes weights in place; the shapes stay,
  so the export's size does not change (the zeros help compression and 2:4 sparse kernels).

Structured pruning keeps the same counts in every block, so the export is an ordinary, smaller
``LlamaForCausalLM`` (``intermediate_size``, ``num_attention_heads``/``num_key_value_heads`` reduced,
``head_dim`` kept) that transformers and vLLM load. The size is ``heads`` (default: all) and then
``intermediate``, or the largest intermediate size that fits ``targetParameters``, or the
``sparsity`` share of channels removed; a size that was a multiple of 64 stays one so the 4-bit
quantizer's groups align. ``check_pruning`` validates it against ``spec.model`` before training.

Recovery (``recoverySteps`` > 0): distillation from the unpruned model (the trained weights, in
memory, frozen) into the pruned one on the training split, with ``model/distillation_loss.py`` at
α = 1 and T = 1: logit-only forward KL without the cross-entropy term, which Sreenivas et al. (2024)
found best for retraining pruned models. It runs on one process (rank 0, after training, before the
export; bf16 autocast on CUDA, fp32 on CPU): AdamW at ``recoveryLr`` (default a tenth of
``optimizer.lr``), ``batch.globalTokens`` per step, linear warmup (a tenth of the steps) then cosine
to ``optimizer.minLrRatio``; the masks of ``unstructured``/``2:4`` are re-applied after every step
so zeros stay zeros.

Status: validation loss and perplexity of the unpruned model (``Before``), the pruned one before
recovery (``Pruned``) and the export (``After``), on the same batches, and the parameter counts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from llmfab.api.training_run import TrainingRunSpec
from llmfab.compress.pruning import apply_masks, prune_model, sparsity
from llmfab.compress.width_pruning import activation_importance, prune_width, slice_block_mlp, top
from llmfab.data.token_windows import WindowSampler, validation_batches
from llmfab.errors import WorkloadError
from llmfab.model import losses
from llmfab.model.distillation_loss import distillation_loss
from llmfab.model.hf import clean_state_dict
from llmfab.model.transformer import ModelArgs, Transformer

CALIBRATION_BATCH = 8  # sequences per calibration forward
# Default recovery peak LR, as a share of optimizer.lr: the pruned model starts near a minimum, so the
# training's own peak throws it out (measured: a tiny run's pruned loss rose from 3.04 to 3.06 at the
# peak, fell to 2.99 at a tenth); Minitron also distils at a fraction of the pretraining LR.
RECOVERY_LR_SHARE = 0.1


def kept_channels(intermediate: int, share_removed: float) -> int:
    """At least ``share_removed`` of the channels go. A size that was a multiple of 64 (as
    ``spec.model`` rounds it) stays one, down to 64, so the 4-bit quantizer's groups still align."""
    kept = max(1, round(intermediate * (1.0 - share_removed)))
    if intermediate % 64 == 0 and kept >= 64:
        kept = kept // 64 * 64
    return kept


def parameters(args: ModelArgs) -> int:
    with torch.device("meta"):
        return Transformer(args).num_parameters()


def target_shape(spec: TrainingRunSpec, args: ModelArgs) -> tuple[int, int]:
    """(heads, intermediate) of the pruned model for structure mlp/width; bad sizes name their field."""
    p = spec.pruning
    group = args.heads // args.kv_heads
    heads = p.heads if p.heads is not None else args.heads
    if heads > args.heads:
        raise WorkloadError(f"spec.pruning.heads: {heads} exceeds the model's spec.model.heads ({args.heads}); "
                            "give the number of heads to keep, at most that")
    if heads % group:
        raise WorkloadError(
            f"spec.pruning.heads: {heads} is not a multiple of the GQA group size heads/kvHeads = {group} "
            f"(whole groups are pruned); use one of {list(range(group, args.heads + 1, group))}")
    aligned = args.intermediate % 64 == 0
    if p.intermediate is not None:
        intermediate = p.intermediate
        if intermediate > args.intermediate:
            raise WorkloadError(f"spec.pruning.intermediate: {intermediate} exceeds the model's intermediate size "
                                f"{args.intermediate}; give the number of MLP channels to keep, at most that")
        if aligned and intermediate % 64:
            lower = max(64, intermediate // 64 * 64)
            raise WorkloadError(
                f"spec.pruning.intermediate: {intermediate} is not a multiple of 64 (the model's {args.intermediate} "
                f"is, and the 4-bit quantizer's groups need it); use {lower} or {lower + 64}")
    elif p.target_parameters is not None:
        intermediate = _intermediate_for(p.target_parameters, dataclasses.replace(
            args, heads=heads, kv_heads=heads // group, head_dim=args.head_dim), aligned, args)
    else:
        intermediate = kept_channels(args.intermediate, p.sparsity)
    if (heads, intermediate) == (args.heads, args.intermediate):
        raise WorkloadError(f"spec.pruning: heads {heads} and intermediate {intermediate} are the model's own sizes, "
                            "so nothing would be pruned; keep fewer heads or channels")
    return heads, intermediate


def _intermediate_for(target: int, args: ModelArgs, aligned: bool, original: ModelArgs) -> int:
    """The largest intermediate size (a multiple of 64 where ``aligned``) whose model has ≤ ``target`` parameters."""
    full = parameters(original)
    if target >= full:
        raise WorkloadError(f"spec.pruning.targetParameters: {target} is not below the model's {full} parameters; "
                            "give a smaller target")
    per_channel = 3 * args.hidden * args.sharing_groups  # gate, up and down of every distinct block
    fixed = parameters(dataclasses.replace(args, intermediate=1)) - per_channel
    step = 64 if aligned else 1
    intermediate = min(args.intermediate, (target - fixed) // per_channel) // step * step
    if intermediate < step:
        raise WorkloadError(
            f"spec.pruning.targetParameters: {target} is below the smallest model this can reach, "
            f"{fixed + per_channel * step} parameters (intermediate {step} with {args.heads} heads); raise it, "
            "or keep fewer heads (spec.pruning.heads with structure: width)")
    return int(intermediate)


def check_pruning(spec: TrainingRunSpec, vocab_size: int) -> None:
    """Before training: a structured target that cannot be built fails now, not after the run."""
    if not spec.pruning.enabled or spec.pruning.structure not in ("mlp", "width"):
        return
    from llmfab.model.from_spec import model_args_from_spec

    target_shape(spec, model_args_from_spec(spec.model, vocab_size))


@torch.no_grad()
def prune_mlp_channels(state: dict[str, torch.Tensor], args: ModelArgs, share_removed: float,
                       keep: int | None = None) -> tuple[dict[str, torch.Tensor], ModelArgs]:
    """(state, args) with each block's MLP cut to its ``keep`` (default: from ``share_removed``)
    largest-norm intermediate channels: the magnitude criterion."""
    keep = kept_channels(args.intermediate, share_removed) if keep is None else keep
    out = dict(state)
    for group in range(args.sharing_groups):
        b = f"blocks.{group}.mlp."
        gate, up = state[b + "gate_up.weight"].chunk(2)  # [I, H] each
        down = state[b + "down.weight"]  # [H, I]
        importance = gate.float().norm(dim=1) * up.float().norm(dim=1) * down.float().norm(dim=0)
        slice_block_mlp(out, group, top(importance, keep))
    return out, dataclasses.replace(args, intermediate=keep)


def calibration_batches(data: Any, args: ModelArgs, spec: TrainingRunSpec) -> list[torch.Tensor]:
    """``calibrationSamples`` windows of the training split (the training's own seeded order), as inputs."""
    sampler = WindowSampler(data.split("train"), args.context_length, spec.seed)
    windows = sampler.next_batch(spec.pruning.calibration_samples, 0, 1)[:, :-1]
    return list(torch.split(windows, CALIBRATION_BATCH))


def prune(state: dict[str, torch.Tensor], args: ModelArgs, spec: TrainingRunSpec,
          data: Any = None) -> tuple[dict[str, torch.Tensor], ModelArgs, float, dict[str, torch.Tensor]]:
    """Pruned (state, args), the share of zeros among the blocks' weights, and the keep-masks of
    unstructured/2:4 (empty for structured pruning). ``data``: the Dataset (method activation)."""
    p = spec.pruning
    if p.structure in ("mlp", "width"):
        heads, intermediate = target_shape(spec, args)
        if p.chosen_method() == "magnitude":
            state, args = prune_mlp_channels(state, args, p.sparsity, keep=intermediate)
            return state, args, 0.0, {}
        if data is None:
            raise ValueError("prune: method activation needs the Dataset for calibration")
        importance = activation_importance(_model(state, args, _device()), calibration_batches(data, args, spec))
        state, args = prune_width(state, args, importance, intermediate=intermediate, heads=heads)
        return state, args, 0.0, {}
    model = _model(state, args, torch.device("cpu"))
    masks = prune_model(model, p)
    zeros = sparsity(model)
    return _state(model), args, zeros, masks


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model(state: dict[str, torch.Tensor], args: ModelArgs, device: torch.device) -> Transformer:
    model = Transformer(args)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)  # rope tables: not persistent
    return model.to(device).eval()


def _state(model: Transformer) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def validation_loss(state: dict[str, torch.Tensor], args: ModelArgs, batches: list[torch.Tensor],
                    spec: TrainingRunSpec) -> float:
    device = _device()
    model = _model(state, args, device)
    total = 0.0
    for batch in batches:
        batch = batch.to(device)
        hidden = model(batch[:, :-1])
        total += float(losses.chunked_cross_entropy(hidden, model.output.weight, batch[:, 1:],
                                                    chunk_tokens=spec.loss_chunk_tokens))
    return total / len(batches)


def recover(state: dict[str, torch.Tensor], args: ModelArgs, teacher_state: dict[str, torch.Tensor],
            teacher_args: ModelArgs, spec: TrainingRunSpec, data: Any,
            masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``spec.pruning.recoverySteps`` of logit distillation from the unpruned model into the pruned one."""
    p, o = spec.pruning, spec.optimizer
    device = _device()
    # bf16 autocast on CUDA unless the run asked for fp32; fp32 on CPU (where bf16 is only sometimes
    # faster, and a short recovery is not worth components.precision's probe).
    bf16 = device.type == "cuda" and spec.precision != "fp32" and torch.cuda.is_bf16_supported()
    student = _model(state, args, device).train()
    teacher = _model(teacher_state, teacher_args, device)
    teacher.requires_grad_(False)
    sequences = max(1, spec.batch.global_tokens // args.context_length)
    micro = min(sequences, spec.batch.micro_batch_size or spec.batch.max_micro_batch_size)
    sampler = WindowSampler(data.split("train"), args.context_length, spec.seed)
    peak = p.recovery_lr if p.recovery_lr is not None else o.lr * RECOVERY_LR_SHARE
    warmup = max(1, p.recovery_steps // 10)
    optimizer = torch.optim.AdamW(student.parameters(), lr=peak, betas=(o.beta1, o.beta2), eps=o.eps,
                                  weight_decay=0.0)
    for step in range(p.recovery_steps):
        if step < warmup:
            scale = (step + 1) / warmup
        else:
            progress = (step - warmup) / max(1, p.recovery_steps - warmup)
            scale = o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = peak * scale
        batch = sampler.next_batch(sequences, 0, 1).to(device)
        for chunk in torch.split(batch, micro):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                hidden = student(chunk[:, :-1])
                with torch.no_grad():
                    teacher_hidden = teacher(chunk[:, :-1])
                loss, _ = distillation_loss(hidden, student.output.weight, teacher_hidden, teacher.output.weight,
                                            chunk[:, 1:], temperature=1.0, alpha=1.0,
                                            chunk_tokens=spec.loss_chunk_tokens)
            torch.autograd.backward(loss * (chunk.shape[0] / sequences))
        if o.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(student.parameters(), o.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if masks:
            apply_masks(student, masks)
    return _state(student)


def prune_trained(state: dict[str, torch.Tensor], args: ModelArgs, spec: TrainingRunSpec,
                  data: Any) -> tuple[dict[str, torch.Tensor], ModelArgs, dict[str, Any]]:
    """Prune (and recover) the final weights; returns them, their args and the ``status.pruning`` numbers."""
    p = spec.pruning
    state = clean_state_dict(state)
    batches = validation_batches(data.split("val"), args.context_length, 8, spec.eval_batches, 0, 1)
    before, parameters_before = validation_loss(state, args, batches, spec), parameters(args)
    pruned_state, pruned_args, zeros, masks = prune(state, args, spec, data)
    pruned = validation_loss(pruned_state, pruned_args, batches, spec)
    after = pruned
    if p.recovery_steps:
        pruned_state = recover(pruned_state, pruned_args, state, args, spec, data, masks)
        after = validation_loss(pruned_state, pruned_args, batches, spec)
        zeros = sparsity(_model(pruned_state, pruned_args, torch.device("cpu"))) if masks else zeros
    report = {
        "structure": p.structure, "method": p.chosen_method(), "intermediateSize": pruned_args.intermediate,
        "heads": pruned_args.heads, "kvHeads": pruned_args.kv_heads, "headDim": pruned_args.head_dim,
        "recoverySteps": p.recovery_steps,
        "valLossBefore": before, "valLossPruned": pruned, "valLossAfter": after,
        "valPerplexityBefore": math.exp(before), "valPerplexityPruned": math.exp(pruned),
        "valPerplexityAfter": math.exp(after),
        "parametersBefore": parameters_before, "parametersAfter": parameters(pruned_args), "sparsity": zeros,
    }
    return pruned_state, pruned_args, report
