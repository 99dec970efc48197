"""Hand-fused forward/backward pairs for the block's elementwise work, for eager mode (the CPU path).

Written as PyTorch ops, autograd turns RMSNorm, rotary embeddings and SwiGLU into many full passes
over ``[B, T, …]`` tensors: slicing backward zero-fills and copies, ``cat``/``split`` backward
concatenates, every intermediate is allocated. On CPU, where nothing fuses them, that was about a
fifth of a training step at the benchmark shape (``benchmarks/train_throughput.py --profile``).
Each :class:`torch.autograd.Function` here computes the same math in fewer passes and writes its
gradient straight into the layout the next matmul reads (one ``[B, T, (heads + 2·kv)·d]`` buffer
for q/k/v, one ``[B, T, 2·intermediate]`` for gate/up), saving only what backward needs.

Under ``torch.compile`` (``compile: true``, CUDA or CPU) the plain formulation is used instead: inductor fuses it
into the same few kernels by itself and traces it without graph breaks. Both formulations are the
same math; ``tests/training_model/test_eager_kernels.py`` checks values and gradients of one against the
other, ``test_step_equivalence.py`` the whole step against the pre-change code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _eager() -> bool:
    return not torch.compiler.is_compiling()


# --- RMSNorm ---------------------------------------------------------------------------------------


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) · weight, normalised in fp32 and cast back before the weight (HF's LlamaRMSNorm)."""
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # [..., 1]
        normed = (x32 * rstd).to(x.dtype)
        ctx.save_for_backward(x, weight, rstd)
        if normed.dtype == torch.promote_types(normed.dtype, weight.dtype):
            return normed.mul_(weight)  # the product's dtype: reuse the buffer
        return weight * normed

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, rstd = ctx.saved_tensors
        xhat = x.float() * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * xhat.to(x.dtype)).sum(dim=tuple(range(grad.dim() - 1))).to(weight.dtype)
        # d/dx of xhat·w: rstd · (g·w − xhat · mean(g·w·xhat))
        gw = grad.float() * weight.float()
        dot = (gw * xhat).mean(-1, keepdim=True)
        grad_x = gw.sub_(xhat.mul_(dot)).mul_(rstd).to(x.dtype)
        return grad_x, grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if _eager():
        out: torch.Tensor = _RMSNorm.apply(x, weight, eps)  # type: ignore[no-untyped-call]
        return out
    return rms_norm_reference(x, weight, eps)


# --- rotary embeddings on the fused q/k/v projection ---------------------------------------------


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def qkv_rope_reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                       head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, T, heads|kv_heads, d] from qkv [B, T, (heads + 2·kv)·d]; q and k rotated
    (rotate-half convention; cos/sin [T, 1, d] hold each frequency twice)."""
    B, T, _ = qkv.shape
    q, k, v = torch.split(qkv, [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k = q.view(B, T, heads, head_dim), k.view(B, T, kv_heads, head_dim)
    # In the activation dtype: under bf16 autocast, fp32 tables would promote q and k to fp32.
    c, s = cos.to(qkv.dtype), sin.to(qkv.dtype)
    return q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s, v.view(B, T, kv_heads, head_dim)


class _QKVRope(torch.autograd.Function):
    """Rotation y1 = x1·c − x2·s, y2 = x2·c + x1·s on the halves (x1, x2) of every q and k head.

    It is linear in x, so backward needs only the tables: g1·c + g2·s and g2·c − g1·s.
    """

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = qkv.shape
        half = head_dim // 2
        c, s = cos[..., :half].to(qkv.dtype), sin[..., :half].to(qkv.dtype)
        x = qkv.view(B, T, heads + 2 * kv_heads, head_dim)
        q = _rotate(x[:, :, :heads], c, s, qkv.new_empty(B, T, heads, head_dim), 1.0)
        k = _rotate(x[:, :, heads : heads + kv_heads], c, s, qkv.new_empty(B, T, kv_heads, head_dim), 1.0)
        v = x[:, :, heads + kv_heads :].clone(memory_format=torch.contiguous_format)
        ctx.save_for_backward(c, s)
        ctx.heads = heads
        return q, k, v

    @staticmethod
    def backward(ctx: Any, gq: torch.Tensor, gk: torch.Tensor, gv: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        c, s = ctx.saved_tensors
        B, T, heads, head_dim = gq.shape
        kv_heads = gk.shape[2]
        grad = gq.new_empty(B, T, heads + 2 * kv_heads, head_dim)
        _rotate(gq, c, s, grad[:, :, :heads], -1.0)  # the transpose of a rotation: by the negative angle
        _rotate(gk, c, s, grad[:, :, heads : heads + kv_heads], -1.0)
        grad[:, :, heads + kv_heads :].copy_(gv)
        return grad.view(B, T, -1), None, None, None, None, None


def _rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, out: torch.Tensor, sign: float) -> torch.Tensor:
    """out = (x1·c − sign·x2·s, x2·c + sign·x1·s) for the halves x1, x2 of x's last dimension."""
    half = x.shape[-1] // 2
    x1, x2, y1, y2 = x[..., :half], x[..., half:], out[..., :half], out[..., half:]
    torch.mul(x1, c, out=y1).addcmul_(x2, s, value=-sign)
    torch.mul(x2, c, out=y2).addcmul_(x1, s, value=sign)
    return out


def qkv_rope(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
             head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _eager():
        out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = _QKVRope.apply(  # type: ignore[no-untyped-call]
            qkv, cos, sin, heads, kv_heads, head_dim)
        return out
    return qkv_rope_reference(qkv, cos, sin, heads, kv_heads, head_dim)


# --- SwiGLU on the fused gate/up projection ------------------------------------------------------


def swiglu_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up for gate_up = [gate; up] along the last dimension."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        ctx.save_for_backward(gate_up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor]:
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        out = torch.empty_like(gate_up)
        g_gate, g_up = out.chunk(2, dim=-1)
        torch.mul(grad, F.silu(gate), out=g_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=g_gate)
        return (out,)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    if _eager():
        out: torch.Tensor = _SwiGLU.apply(gate_up)  # type: ignore[no-untyped-call]
        return out
    return swiglu_reference(gate_up)
