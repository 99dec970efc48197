"""A Llama-architecture decoder, read top to bottom (nanoGPT's shape).

ModelArgs -> RMSNorm -> rotary embeddings -> Attention (GQA) -> MLP (SwiGLU) -> Block -> Transformer.

The numerics are those of Hugging Face's ``LlamaForCausalLM`` (RMSNorm in fp32, the rotate-half RoPE
convention, ``down(silu(gate(x)) * up(x))``), so the export is a weight copy. Two layouts differ only
in storage: q/k/v and gate/up are each one fused Linear (fewer, larger matmuls: faster on CPU); the
export splits them by rows. With ALBERT-style sharing, ``blocks`` holds ``sharing_groups`` distinct
blocks and layer ``i`` applies ``blocks[i % sharing_groups]``.

The model knows nothing of FSDP, precision, activation checkpointing or compile: those are applied
from outside (``training/components/distributed.py``) to ``blocks`` and the root. ``forward`` returns the final
normalised hidden states, not logits, so the loss can project through ``output`` chunk by chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmfab.model import kernels


@dataclass
class ModelArgs:
    vocab_size: int
    layers: int = 6
    hidden: int = 512
    heads: int = 8
    kv_heads: int = 8
    intermediate: int = 1408
    context_length: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    sharing_groups: int = 6  # distinct blocks; == layers means no sharing
    head_dim: int = 0  # 0: hidden // heads; explicit where heads were pruned (heads·head_dim < hidden)

    def __post_init__(self) -> None:
        problems = []
        if not self.head_dim and self.hidden % self.heads:
            problems.append(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        else:
            self.head_dim = self.head_dim or self.hidden // self.heads
            if self.head_dim % 2:
                problems.append(f"head size ({self.head_dim}) must be even for rotary embeddings")
        if self.heads % self.kv_heads:
            problems.append(f"heads ({self.heads}) must be divisible by kv_heads ({self.kv_heads})")
        if not 1 <= self.sharing_groups <= self.layers:
            problems.append(f"sharing_groups ({self.sharing_groups}) must be in 1..layers ({self.layers})")
        if self.vocab_size < 1:
            problems.append(f"vocab_size ({self.vocab_size}) must be positive")
        if problems:
            raise ValueError("ModelArgs: " + "; ".join(problems))


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and cast back (as HF's LlamaRMSNorm does)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.rms_norm(x, self.weight, self.eps)  # one fused pass pair in eager mode


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [length, head_dim]: the frequencies repeated twice (rotate-half layout)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.int64).float(), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + d/2) of x [B, T, heads, d] by the position's angle."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    # In the activation dtype: under bf16 autocast, fp32 tables would promote q and k to fp32.
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention; ``kv_heads < heads`` is grouped-query attention."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = args.heads, args.kv_heads, args.head_dim
        self.qkv = nn.Linear(args.hidden, (args.heads + 2 * args.kv_heads) * args.head_dim, bias=False)
        self.proj = nn.Linear(args.heads * args.head_dim, args.hidden, bias=False)
        self.dropout = args.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # q and k rotated, v split off, [B, T, heads, d]; backward writes one grad for the qkv matmul.
        q, k, v = kernels.qkv_rope(self.qkv(x), cos, sin, self.heads, self.kv_heads, self.head_dim)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.kv_heads != self.heads,
        )
        out: torch.Tensor = self.proj(y.transpose(1, 2).reshape(B, T, -1))
        return out


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up fused into one Linear ([gate; up] rows)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_up = nn.Linear(args.hidden, 2 * args.intermediate, bias=False)
        self.down = nn.Linear(args.intermediate, args.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down(kernels.swiglu(self.gate_up(x)))
        return out


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(args.hidden, args.norm_eps)
        self.attn = Attention(args)
        self.mlp_norm = RMSNorm(args.hidden, args.norm_eps)
        self.mlp = MLP(args)
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin))
        out: torch.Tensor = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return out


class Transformer(nn.Module):
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.hidden)
        self.blocks: nn.ModuleList = nn.ModuleList(Block(args) for _ in range(args.sharing_groups))
        self.norm = RMSNorm(args.hidden, args.norm_eps)
        self.output = nn.Linear(args.hidden, args.vocab_size, bias=False)
        # Not persistent: recomputed by init_weights(), so a meta-device build followed by
        # to_empty() + init_weights() (the FSDP way) ends up with correct tables.
        self.register_buffer("rope_cos", torch.empty(args.context_length, args.head_dim), persistent=False)
        self.register_buffer("rope_sin", torch.empty(args.context_length, args.head_dim), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std); the projections into the residual stream scaled by 1/sqrt(2·layers)."""
        a = self.args
        if a.tie_embeddings:  # here, not in __init__ only: to_empty() after a meta build unties them
            self.output.weight = self.embed.weight
        cos, sin = rope_tables(a.head_dim, a.context_length, a.rope_theta)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        residual_std = a.init_std / math.sqrt(2 * a.layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, 0.0, residual_std)
            else:
                nn.init.normal_(p, 0.0, a.init_std)

    def num_parameters(self) -> int:
        """Distinct parameters: a block shared by several layers and a tied head count once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] -> final-normalised hidden states [B, T, hidden]."""
        T = tokens.shape[1]
        if T > self.args.context_length:
            raise ValueError(f"sequence length {T} exceeds context_length {self.args.context_length}")
        cos, sin = self.rope_cos[:T, None, :], self.rope_sin[:T, None, :]  # broadcast over [B, T, heads, d]
        x = self.embed(tokens)
        groups = len(self.blocks)
        for i in range(self.args.layers):
            x = self.blocks[i % groups](x, cos, sin)
        out: torch.Tensor = self.norm(x)
        return out

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Convenience for inference and tests: [B, T, vocab]."""
        out: torch.Tensor = self.output(self(tokens))
        return out
