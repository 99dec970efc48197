"""Knowledge distillation's loss, fused with the output heads (Hinton et al., 2015, "Distilling the
Knowledge in a Neural Network"):

    loss = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(z_s, targets)

forward KL on temperature-softened logits; T² keeps the soft term's gradient scale independent of
T; averaged over target tokens. As in ``losses.chunked_cross_entropy``, both output heads are
projected ``chunk_tokens`` rows at a time and the student's gradients are computed while a chunk's
logits are alive: the extra memory is a few ``chunk_tokens × V`` fp32 buffers, never the full
logits of either model. The distill objective trains with it; post-training pruning recovers with it.
"""

from __future__ import annotations

from typing import Any

import torch

from llmfab.model import losses


def _chunk(logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
           temperature: float, alpha: float, smoothing: float,
           with_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One chunk (fp32 logits [n, V]): summed loss, summed T²·KL, and d(summed loss)/d logits."""
    ce, lse = losses._chunk_losses(logits, targets, valid, smoothing)
    log_student = torch.log_softmax(logits / temperature, dim=-1)
    log_teacher = torch.log_softmax(teacher_logits / temperature, dim=-1)
    teacher_probs = log_teacher.exp()
    kl_rows = (teacher_probs * (log_teacher - log_student)).sum(dim=-1)
    soft = temperature * temperature * torch.where(valid, kl_rows, 0.0).sum()
    loss = alpha * soft + (1.0 - alpha) * ce
    if not with_grad:
        return loss, soft, None
    # CE: softmax − ((1 − ε)·onehot + ε/V); T²·KL: T·(softmax(z_s/T) − softmax(z_t/T)).
    grad = (1.0 - alpha) * (logits - lse.unsqueeze(1)).exp()
    grad.scatter_add_(1, targets.clamp_min(0).unsqueeze(1),
                      torch.full((targets.shape[0], 1), (1.0 - alpha) * (smoothing - 1.0), device=grad.device))
    if smoothing:
        grad.sub_((1.0 - alpha) * smoothing / logits.shape[1])
    grad.add_(alpha * temperature * (log_student.exp() - teacher_probs))
    return loss, soft, grad


class _LinearDistillation(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, teacher_hidden: torch.Tensor,
                teacher_weight: torch.Tensor, targets: torch.Tensor, temperature: float, alpha: float,
                smoothing: float, chunk_tokens: int, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = losses._matmul_dtype(hidden)
        w = weight.to(dtype)
        tw = teacher_weight.to(teacher_hidden.dtype)
        valid_all = targets != ignore_index
        inv_count = 1.0 / valid_all.sum().clamp_min(1).float()
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        soft_total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            h = hidden[rows].to(dtype)
            logits = torch.mm(h, w.t()).float()
            teacher_logits = torch.mm(teacher_hidden[rows], tw.t()).float()
            loss, soft, g = _chunk(logits, teacher_logits, targets[rows], valid_all[rows],
                                   temperature, alpha, smoothing, with_grad=True)
            total += loss
            soft_total += soft
            assert g is not None
            row_scale = torch.where(valid_all[rows], inv_count, 0.0).unsqueeze(1)
            g = g.to(dtype)
            grad_hidden[rows] = torch.mm(g, w) * row_scale
            grad_weight.add_(torch.mm(g.t(), (h * row_scale).to(dtype)).float())
        ctx.grads = (grad_hidden, grad_weight.to(weight.dtype))
        soft_mean = soft_total * inv_count
        ctx.mark_non_differentiable(soft_mean)
        return total * inv_count, soft_mean

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, _grad_soft: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.grads
        del ctx.grads
        return grad_hidden * grad_out, grad_weight * grad_out, *([None] * 8)


def distillation_loss(hidden: torch.Tensor, head_weight: torch.Tensor, teacher_hidden: torch.Tensor,
                      teacher_head_weight: torch.Tensor, targets: torch.Tensor, temperature: float = 2.0,
                      alpha: float = 0.5, label_smoothing: float = 0.0, chunk_tokens: int = 4096,
                      ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed loss, T²·KL term) of student ``hidden @ head_weight.T`` against the teacher's logits.

    hidden [..., H], teacher_hidden [..., H_t], head weights [V, H] and [V, H_t], targets [...].
    Gradients flow to the student's ``hidden`` and ``head_weight`` only.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    th = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
    t = targets.reshape(-1)
    tw = teacher_head_weight.detach()
    if torch.is_grad_enabled() and (h.requires_grad or head_weight.requires_grad):
        loss, soft = _LinearDistillation.apply(  # type: ignore[no-untyped-call]
            h, head_weight, th, tw, t, temperature, alpha, label_smoothing, chunk_tokens, ignore_index)
        return loss, soft
    dtype = losses._matmul_dtype(h)
    valid = t != ignore_index
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    soft_total = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, h.shape[0], chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        logits = torch.mm(h[rows].to(dtype), head_weight.to(dtype).t()).float()
        teacher_logits = torch.mm(th[rows], tw.to(th.dtype).t()).float()
        loss, soft, _ = _chunk(logits, teacher_logits, t[rows], valid[rows], temperature, alpha,
                               label_smoothing, with_grad=False)
        total += loss
        soft_total += soft
    count = valid.sum().clamp_min(1).float()
    return total / count, soft_total / count
