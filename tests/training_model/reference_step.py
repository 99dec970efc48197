"""The training step's math as it was before the issue-13 speed work, kept as the "before" of
``test_step_equivalence.py``: llmfab's Llama block written plainly (RMSNorm in fp32, rotate-half
RoPE from freshly built tables, ``down(silu(gate) * up)``), the loss as ``F.cross_entropy`` over the
full fp32 logits, the global-norm clip and torch's fused AdamW over the same two decay groups.

It is deliberately unoptimised and must not follow later changes to ``llmfab/model/transformer.py``
or ``losses.py``: comparing the real trainer step against it on the same CPU is what shows a speed
change kept the numbers (golden losses recorded on one CPU would not survive AVX2 vs AVX-512
summation orders at 1e-5). Parameter names match ``Transformer``'s so its state dict loads here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmfab.model.transformer import ModelArgs


class RefRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def ref_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x [B, T, heads, d] rotated pairwise (i, i + d/2) by position × theta^(-2i/d)."""
    T, d = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
    angles = torch.outer(torch.arange(T, dtype=torch.int64).float(), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)[:, None, :]
    half = d // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * angles.cos() + rotated * angles.sin()


class RefAttention(nn.Module):
    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.a = a
        self.qkv = nn.Linear(a.hidden, (a.heads + 2 * a.kv_heads) * a.head_dim, bias=False)
        self.proj = nn.Linear(a.heads * a.head_dim, a.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, (B, T, _) = self.a, x.shape
        q, k, v = self.qkv(x).split([a.heads * a.head_dim, a.kv_heads * a.head_dim, a.kv_heads * a.head_dim], -1)
        q = ref_rope(q.view(B, T, a.heads, a.head_dim), a.rope_theta).transpose(1, 2)
        k = ref_rope(k.view(B, T, a.kv_heads, a.head_dim), a.rope_theta).transpose(1, 2)
        v = v.view(B, T, a.kv_heads, a.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=a.kv_heads != a.heads)
        out: torch.Tensor = self.proj(y.transpose(1, 2).reshape(B, T, -1))
        return out


class RefMLP(nn.Module):
    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.gate_up = nn.Linear(a.hidden, 2 * a.intermediate, bias=False)
        self.down = nn.Linear(a.intermediate, a.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        out: torch.Tensor = self.down(F.silu(gate) * up)
        return out


class RefBlock(nn.Module):
    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        self.attn_norm = RefRMSNorm(a.hidden, a.norm_eps)
        self.attn = RefAttention(a)
        self.mlp_norm = RefRMSNorm(a.hidden, a.norm_eps)
        self.mlp = RefMLP(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        out: torch.Tensor = x + self.mlp(self.mlp_norm(x))
        return out


class RefTransformer(nn.Module):
    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        assert a.dropout == 0.0 and a.tie_embeddings, "the reference covers the deterministic, tied case"
        self.a = a
        self.embed = nn.Embedding(a.vocab_size, a.hidden)
        self.blocks = nn.ModuleList(RefBlock(a) for _ in range(a.sharing_groups))
        self.norm = RefRMSNorm(a.hidden, a.norm_eps)
        self.output = nn.Linear(a.hidden, a.vocab_size, bias=False)
        self.output.weight = self.embed.weight

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        x = self.embed(tokens)
        for i in range(self.a.layers):
            x = self.blocks[i % len(self.blocks)](x)
        logits = self.output(self.norm(x)).float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               label_smoothing=label_smoothing)


def ref_optimizer(model: RefTransformer, lr: float, betas: tuple[float, float], eps: float,
                  weight_decay: float) -> torch.optim.Optimizer:
    """Fused AdamW; matrices decay, norms and the (tied) embedding do not."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.startswith("embed")]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n.startswith("embed")]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=betas, eps=eps, fused=True)


def ref_step(model: RefTransformer, optimizer: torch.optim.Optimizer, batch: torch.Tensor,
             micro_batch: int, grad_clip: float | None, label_smoothing: float) -> tuple[float, float]:
    """One optimizer step over ``batch`` [B, T + 1] in micro-batches: (loss, grad norm before clipping)."""
    total = 0.0
    for chunk in torch.split(batch, micro_batch):
        weight = chunk.shape[0] / batch.shape[0]
        loss = model.loss(chunk[:, :-1], chunk[:, 1:], label_smoothing)
        (loss * weight).backward()
        total += float(loss.detach()) * weight
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, norm
