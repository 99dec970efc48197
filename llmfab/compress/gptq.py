"""Group-wise 4-bit weight quantization: round-to-nearest and GPTQ (Frantar et al., 2022).

Pure tensor math, no model or file handling (that is :mod:`llmfab.compress.quantize`). The integer
convention is the one compressed-tensors uses, so its packer re-derives exactly our integers:

    q = clamp(round(w / scale) + zero_point, -2**(b-1), 2**(b-1) - 1),   w_hat = (q - zero_point) * scale

Symmetric: ``zero_point = 0`` and ``scale = absmax / ((2**b - 1) / 2)``. Asymmetric: the group's
[min, max] (widened to include 0) is mapped onto the full integer range. Scales are rounded to the
storage dtype (bf16) *before* the integers are chosen, so what is saved is what was optimised.

GPTQ quantizes one column at a time and spreads each column's rounding error over the columns not
yet quantized, weighted by the inverse Hessian ``H = 2 X^T X`` of the layer's calibration inputs
(the "lazy batch" formulation with a Cholesky factor of ``H^-1``). Groups align with blocks, and a
group's scale is computed from the already error-corrected weights when the group starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class QuantizedWeight:
    """A quantized linear weight: integers, per-group scale and zero point, and its dequantization."""

    q: torch.Tensor  # int8 [out, in], values in the signed b-bit range
    scale: torch.Tensor  # [out, in // group_size], in the storage dtype
    zero_point: torch.Tensor  # int8 [out, in // group_size]; zeros when symmetric
    dequantized: torch.Tensor  # float32 [out, in]: (q - zero_point) * scale


def _qrange(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def group_params(
    w: torch.Tensor, bits: int, symmetric: bool, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for each row of ``w`` (one group: [out, group_size]) -> ([out], [out])."""
    qmin, qmax = _qrange(bits)
    w = w.float()
    if symmetric:
        absmax = w.abs().amax(dim=1)
        scale = absmax / ((qmax - qmin) / 2)
        zero = torch.zeros_like(scale)
    else:
        lo = w.amin(dim=1).clamp(max=0)
        hi = w.amax(dim=1).clamp(min=0)
        scale = (hi - lo) / (qmax - qmin)
    # A constant-zero group would give scale 0 (division by zero); any positive scale is exact.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale) * 1e-8)
    scale = scale.to(scale_dtype).float()
    scale = torch.where(scale > 0, scale, torch.full_like(scale, torch.finfo(scale_dtype).tiny))
    if not symmetric:
        zero = (torch.round(-lo / scale) + qmin).clamp(qmin, qmax)
    return scale, zero


def quantize_column(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integers and dequantized values of ``w`` (any shape broadcasting with scale/zero)."""
    qmin, qmax = _qrange(bits)
    q = torch.clamp(torch.round(w / scale) + zero, qmin, qmax)
    return q, (q - zero) * scale


def _finish(
    q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, deq: torch.Tensor, scale_dtype: torch.dtype
) -> QuantizedWeight:
    return QuantizedWeight(
        q=q.to(torch.int8),
        scale=scales.to(scale_dtype),
        zero_point=zeros.to(torch.int8),
        dequantized=deq,
    )


def rtn_quantize(
    weight: torch.Tensor, group_size: int, bits: int = 4, symmetric: bool = True, scale_dtype: torch.dtype = torch.bfloat16
) -> QuantizedWeight:
    """Round-to-nearest: each group's scale from its own min/max, no calibration data."""
    out_f, in_f = weight.shape
    groups = in_f // group_size
    w = weight.float().reshape(out_f, groups, group_size)
    flat = w.permute(1, 0, 2).reshape(groups * out_f, group_size)
    scale, zero = group_params(flat, bits, symmetric, scale_dtype)
    scale = scale.reshape(groups, out_f).T.contiguous()
    zero = zero.reshape(groups, out_f).T.contiguous()
    q, deq = quantize_column(w, scale.unsqueeze(-1), zero.unsqueeze(-1), bits)
    return _finish(q.reshape(out_f, in_f), scale, zero, deq.reshape(out_f, in_f), scale_dtype)


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    group_size: int,
    bits: int = 4,
    symmetric: bool = True,
    dampening: float = 0.01,
    scale_dtype: torch.dtype = torch.bfloat16,
) -> QuantizedWeight:
    """GPTQ with error feedback. ``hessian`` is ``sum 2 x x^T / n`` over calibration inputs [in, in]."""
    out_f, in_f = weight.shape
    w = weight.detach().float().clone()
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0  # inputs never active in calibration: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    damp = dampening * torch.mean(torch.diag(h))
    h += damp * torch.eye(in_f, dtype=h.dtype)
    # U with H^-1 = U^T U; row i of U holds the update direction for column i onwards.
    try:
        chol = torch.linalg.cholesky(h)
    except RuntimeError:  # torch.linalg.LinAlgError: badly conditioned: more dampening, as the reference does
        h += 10 * damp * torch.eye(in_f, dtype=h.dtype)
        chol = torch.linalg.cholesky(h)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True).float()

    groups = in_f // group_size
    q_all = torch.zeros(out_f, in_f)
    deq_all = torch.zeros(out_f, in_f)
    scales = torch.zeros(out_f, groups)
    zeros = torch.zeros(out_f, groups)
    for g in range(groups):
        i1, i2 = g * group_size, (g + 1) * group_size
        block = w[:, i1:i2].clone()
        errors = torch.zeros_like(block)
        hblock = hinv[i1:i2, i1:i2]
        scale, zero = group_params(block, bits, symmetric, scale_dtype)
        scales[:, g], zeros[:, g] = scale, zero
        for i in range(group_size):
            col = block[:, i]
            q, deq = quantize_column(col, scale, zero, bits)
            q_all[:, i1 + i], deq_all[:, i1 + i] = q, deq
            err = (col - deq) / hblock[i, i]
            block[:, i:] -= err.unsqueeze(1) * hblock[i, i:].unsqueeze(0)
            errors[:, i] = err
        w[:, i2:] -= errors @ hinv[i1:i2, i2:]
    return _finish(q_all, scales, zeros, deq_all, scale_dtype)


class HessianAccumulator:
    """Running ``2/n * sum x x^T`` of a linear layer's inputs (a forward pre-hook feeds it)."""

    def __init__(self, in_features: int) -> None:
        self.h = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        m = x.shape[0]
        self.h *= self.n / (self.n + m)
        self.n += m
        x = x * (2.0 / self.n) ** 0.5
        self.h += x.T @ x
