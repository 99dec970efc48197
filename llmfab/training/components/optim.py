"""Optimizers (AdamW and three low-memory variants), weight-decay groups and the LR schedule.

``build_optimizer(model, spec)`` returns a ``torch.optim.Optimizer`` of ``spec.type``:

- ``adamw``: torch's AdamW (fused kernel where this torch has one, else foreach), fp32 moments:
  8 bytes of state per parameter.
- ``adamw-bf16``: :class:`AdamWBF16`, both moments stored in bf16 with stochastic rounding
  (4 bytes per parameter). Plain round-to-nearest would stall the second moment: with β2 = 0.95 an
  update smaller than half a bf16 ulp is lost every step; stochastic rounding keeps it unbiased.
- ``adamw-8bit``: :class:`AdamW8bit`, block-wise 8-bit moments (~2 bytes per parameter plus one
  fp32 scale per block). torchao's AdamW8bit runs on this CPU but compiles its step per parameter
  shape (20-40 s before the first step here), so llmfab carries its own eager version.
- ``adafactor``: torch's Adafactor, factored second moment (rows + columns), no first moment.

No weight decay on norms, biases and embeddings (a tied output head is the embedding).
The low-memory optimizers draw their rounding noise from their own generator seeded by ``seed``,
so a run is deterministic on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from llmfab.api.training_run import OptimizerSpec
from llmfab.training.components.lowmem_adam import AdamW8bit, AdamWBF16


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: matrices decay; norms, biases and embedding tables (incl. a tied head) do not."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():  # parameters() yields a shared/tied tensor once
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def _torch_adamw_kwargs(params: Iterable[nn.Parameter]) -> dict[str, bool]:
    """fused=True where every parameter's device has a fused AdamW kernel (CPU and CUDA here)."""
    devices = {p.device.type for p in params}
    return {"fused": True} if devices <= {"cpu", "cuda"} else {"foreach": True}


def build_optimizer(model: nn.Module, spec: OptimizerSpec, seed: int = 0) -> torch.optim.Optimizer:
    groups = param_groups(model, spec.weight_decay)
    betas = (spec.beta1, spec.beta2)
    if spec.type == "adamw":
        all_params = [p for g in groups for p in g["params"]]
        return torch.optim.AdamW(groups, lr=spec.lr, betas=betas, eps=spec.eps,
                                 **_torch_adamw_kwargs(all_params))
    if spec.type == "adamw-bf16":
        return AdamWBF16(groups, lr=spec.lr, betas=betas, eps=spec.eps, seed=seed)
    if spec.type == "adamw-8bit":
        return AdamW8bit(groups, lr=spec.lr, betas=betas, eps=spec.eps, seed=seed)
    if spec.type == "adafactor":
        # torch's Adafactor has no first moment; beta2 follows its own decay schedule (-0.8).
        return torch.optim.Adafactor(groups, lr=spec.lr, eps=(None, 1e-3), foreach=True)
    raise ValueError(f"spec.optimizer.type: unknown optimizer {spec.type!r}; "
                     "use adamw, adamw-bf16, adamw-8bit or adafactor")


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's state tensors (this process's shard under FSDP)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                local = value.to_local() if hasattr(value, "to_local") else value
                total += local.numel() * local.element_size()
    return total


def lr_multiplier(step: int, total_steps: int, spec: OptimizerSpec) -> float:
    """Linear warmup to 1, then cosine/linear decay (or constant) to ``min_lr_ratio`` at ``total_steps``."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - spec.warmup_steps) / max(1, total_steps - spec.warmup_steps))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if spec.schedule == "cosine" else 1.0 - progress
    return spec.min_lr_ratio + (1.0 - spec.min_lr_ratio) * shape


def build_lr_scheduler(optimizer: torch.optim.Optimizer, spec: OptimizerSpec, total_steps: int) -> LambdaLR:
    """``scheduler.step()`` after each optimizer step; the LR at step s is ``spec.lr × lr_multiplier(s)``."""
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, spec))
