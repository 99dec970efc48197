"""The hand-fused eager kernels equal the plain formulation (used under torch.compile) in value and
gradient, in fp32 and bf16, and a compiled block takes the plain path without graph breaks."""

from __future__ import annotations

import pytest
import torch

from llmfab.model import kernels as K
from llmfab.model.transformer import Block, rope_tables
from tests.training_model.conftest import tiny_args

DTYPES = {torch.float32: 1e-6, torch.bfloat16: 2e-2}


def _grads(outs: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...], seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=gen).to(o.dtype) for o in outs]
    return torch.autograd.grad(outs, inputs, upstream)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2)])
def test_qkv_rope_matches_rotate_half(dtype: torch.dtype, heads: int, kv_heads: int) -> None:
    B, T, d = 2, 12, 8
    qkv = torch.randn(B, T, (heads + 2 * kv_heads) * d).to(dtype).requires_grad_()
    cos, sin = (t[:, None, :] for t in rope_tables(d, T, 10000.0))
    fused = K._QKVRope.apply(qkv, cos, sin, heads, kv_heads, d)
    plain = K.qkv_rope_reference(qkv, cos, sin, heads, kv_heads, d)
    tol = DTYPES[dtype]
    for a, b in zip(fused, plain, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    torch.testing.assert_close(_grads(fused, (qkv,), 0)[0], _grads(plain, (qkv,), 0)[0], atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_rms_norm_matches_fp32_normalisation(dtype: torch.dtype) -> None:
    x = (3 * torch.randn(2, 5, 16)).to(dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(16)).to(dtype).requires_grad_()
    fused, plain = K._RMSNorm.apply(x, w, 1e-5), K.rms_norm_reference(x, w, 1e-5)
    tol = DTYPES[dtype]
    assert fused.dtype == plain.dtype
    torch.testing.assert_close(fused, plain, atol=tol, rtol=tol)
    for a, b in zip(_grads((fused,), (x, w), 1), _grads((plain,), (x, w), 1), strict=True):
        torch.testing.assert_close(a, b, atol=tol * 4, rtol=tol)
    # fp32 weight on bf16 activations promotes, as the plain product does
    mixed = K._RMSNorm.apply(x, w.float(), 1e-5)
    assert mixed.dtype == K.rms_norm_reference(x, w.float(), 1e-5).dtype


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_swiglu_matches_silu_times_up(dtype: torch.dtype) -> None:
    gate_up = torch.randn(2, 5, 24).to(dtype).requires_grad_()
    fused, plain = K._SwiGLU.apply(gate_up), K.swiglu_reference(gate_up)
    tol = DTYPES[dtype]
    torch.testing.assert_close(fused, plain, atol=tol, rtol=tol)
    torch.testing.assert_close(_grads((fused,), (gate_up,), 2)[0], _grads((plain,), (gate_up,), 2)[0],
                               atol=tol, rtol=tol)


def test_compiled_block_takes_the_plain_path_and_agrees() -> None:
    torch._dynamo.reset()
    args = tiny_args(kv_heads=2)
    block = Block(args)
    cos, sin = (t[:, None, :] for t in rope_tables(args.head_dim, args.context_length, args.rope_theta))
    x = torch.randn(2, args.context_length, args.hidden, requires_grad=True)
    eager = block(x, cos, sin)
    (g_eager,) = torch.autograd.grad(eager.sum(), x)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break fails
    out = compiled(x, cos, sin)
    (g_compiled,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_compiled, g_eager, atol=1e-5, rtol=1e-5)
