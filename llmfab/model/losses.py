"""Cross-entropy through the output head, chunk by chunk, never materialising the full logits.

For a vocabulary V and N tokens the full fp32 logits are N × V × 4 bytes (a 8×512 batch with
V = 8000: 131 MB, and as much again for their gradient). ``chunked_cross_entropy`` projects
``chunk_tokens`` rows at a time and, while a chunk's logits are alive, also computes that chunk's
gradients with respect to the hidden states and the head weight (the softmax-minus-target trick
of fused linear-cross-entropy kernels). Backward then only scales the stored gradients by the
incoming gradient: compared with checkpointing each chunk, the head's forward matmul is not
recomputed, and no chunk's logits outlive its loop iteration.

Label smoothing ε follows ``torch.nn.functional.cross_entropy``:
loss = (1 − ε)·(lse − z_target) + ε·(lse − mean(z)), averaged over targets != ignore_index.
"""

from __future__ import annotations

from typing import Any

import torch


def _matmul_dtype(hidden: torch.Tensor) -> torch.dtype:
    """bf16 under autocast, else the activations' own dtype (fp32, or bf16 FSDP parameters)."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def _chunk_losses(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
                  smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of one chunk, and its log-sum-exp per row (fp32 logits [n, V])."""
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, targets.clamp_min(0).unsqueeze(1)).squeeze(1)
    per_row = lse - (1.0 - smoothing) * target_logit
    if smoothing:
        per_row = per_row - smoothing * logits.mean(dim=-1)
    return torch.where(valid, per_row, 0.0).sum(), lse


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                smoothing: float, chunk_tokens: int, ignore_index: int) -> torch.Tensor:
        dtype = _matmul_dtype(hidden)
        w = weight.to(dtype)
        valid_all = targets != ignore_index
        inv_count = 1.0 / valid_all.sum().clamp_min(1).float()
        vocab = weight.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
        for i, start in enumerate(range(0, hidden.shape[0], chunk_tokens)):
            h = hidden[start:start + chunk_tokens].to(dtype)
            t, valid = targets[start:start + chunk_tokens], valid_all[start:start + chunk_tokens]
            target = t.clamp_min(0).unsqueeze(1)
            # log-softmax is one fused row-wise kernel (max, sum of exp, subtract while the row is in
            # cache); its exp is the softmax the gradient needs, so no second pass over [n, V].
            log_probs = torch.log_softmax(torch.mm(h, w.t()).float(), dim=-1)  # [n, V]: the per-chunk buffer
            # loss per row: −(1 − ε)·log p_target − ε·mean(log p)  (= the lse form of _chunk_losses)
            per_row = log_probs.gather(1, target).squeeze(1).mul_(smoothing - 1.0)
            if smoothing:
                per_row.sub_(log_probs.mean(dim=-1), alpha=smoothing)
            total += torch.where(valid, per_row, 0.0).sum()
            # d loss / d logits = (softmax − ((1 − ε)·onehot + ε / V)) / count, zero on ignored rows.
            probs = log_probs.exp_()
            probs.scatter_add_(1, target, torch.full((t.shape[0], 1), smoothing - 1.0, device=probs.device))
            if smoothing:
                probs.sub_(smoothing / vocab)
            # Rows are scaled after the matmuls, on [n, H] tensors rather than the [n, V] buffer.
            row_scale = torch.where(valid, inv_count, 0.0).unsqueeze(1)  # fp32: no bias from rounding 1/count
            g = probs.to(dtype)
            if grad_hidden.dtype == dtype:
                torch.mm(g, w, out=grad_hidden[start:start + chunk_tokens]).mul_(row_scale)
            else:  # fp32 hidden states under bf16 autocast
                grad_hidden[start:start + chunk_tokens] = torch.mm(g, w) * row_scale
            if dtype == torch.float32:  # beta=0 on the first chunk: the empty buffer is never read
                grad_weight.addmm_(g.t(), h * row_scale, beta=1 if i else 0)
            elif i:
                grad_weight.add_(torch.mm(g.t(), (h * row_scale).to(dtype)).float())
            else:
                grad_weight.copy_(torch.mm(g.t(), (h * row_scale).to(dtype)))
        ctx.grads = (grad_hidden, grad_weight.to(weight.dtype))
        return total * inv_count

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.grads
        del ctx.grads
        return grad_hidden.mul_(grad_out), grad_weight.mul_(grad_out), None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, head_weight: torch.Tensor, targets: torch.Tensor,
                          label_smoothing: float = 0.0, chunk_tokens: int = 4096,
                          ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ head_weight.T`` against ``targets``, chunked over tokens.

    hidden [..., H] (e.g. [B, T, H]), head_weight [V, H], targets [...] (e.g. [B, T]). Equals
    ``F.cross_entropy(logits.float(), targets, label_smoothing=…, ignore_index=…)`` in value and
    gradient, with peak extra memory of one ``chunk_tokens × V`` fp32 buffer.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing: {label_smoothing} must be in [0, 1)")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens: {chunk_tokens} must be positive")
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    if torch.is_grad_enabled() and (h.requires_grad or head_weight.requires_grad):
        out: torch.Tensor = _LinearCrossEntropy.apply(  # type: ignore[no-untyped-call]
            h, head_weight, t, label_smoothing, chunk_tokens, ignore_index)
        return out
    dtype = _matmul_dtype(h)
    w = head_weight.to(dtype)
    valid = t != ignore_index
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, h.shape[0], chunk_tokens):
        logits = torch.mm(h[start:start + chunk_tokens].to(dtype), w.t()).float()
        total += _chunk_losses(logits, t[start:start + chunk_tokens], valid[start:start + chunk_tokens],
                               label_smoothing)[0]
    return total / valid.sum().clamp_min(1).float()
