"""W4A16 matmul on x86 CPUs with PyTorch's own int4 kernel, for weights in vLLM's loaded layout.

vLLM holds a compressed-tensors W4A16 linear, after loading, as ``w_q`` [in/8, out] int32 (eight
4-bit values per word along the inputs, element i at bits 4i..4i+3), ``scales`` [groups, out] and
``zeros`` [groups, out/8] int32 packed along the outputs, or None for the symmetric ``uint4b8`` type
(zero point 8); the weight is ``(q - zero) * scale``.

:func:`pack` turns that, once at load, into what ``aten._weight_int4pack_mm_for_cpu`` takes (the
kernel torchao's CPU int4 layout runs): nibbles in the kernel's blocked [out, in/2] uint8 layout
and one bf16 [in/g, out, 2] tensor of (scale, offset), where the kernel computes
``(q - 8) * scale + offset``; so ``offset = (8 - zero) * scale`` (0 for symmetric weights).
Its vectorized AVX2 and AVX-512 paths take bf16 activations only (the fp32 path is scalar, 30-70x
slower measured here), so activations of other dtypes are multiplied in bf16 — the "A16" of W4A16 —
and the result is cast back. Two roundings differ from the exact ``(q - zero) * scale``: the offset
is stored in bf16 (error at most 1/64 of a quantization step, and none for symmetric weights), and
fp32 scales become bf16.

The kernel takes groups of 32, 64, 128 or 256 inputs. A larger group that is a multiple of 32
(channelwise, ``group_size`` -1) is run as several kernel groups sharing one scale. Shapes it cannot
take get a reason from :func:`unsupported_reason`; the caller then uses :func:`dequantize`, which
unpacks the whole weight on every call (correct, ~20x slower per token).

The packed layout depends on the SIMD level PyTorch dispatches to (64 outputs per block with
AVX-512, 32 with AVX2), so pack and multiply in the same process. Imports only torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KERNEL_GROUPS = (256, 128, 64, 32)  # what _weight_int4pack_mm_for_cpu accepts, largest first


@dataclass(frozen=True)
class PackedInt4:
    """One linear layer in the kernel's layout."""

    weight: torch.Tensor  # uint8 [out, in/2], the kernel's blocked nibble order
    scale_and_offset: torch.Tensor  # bf16 [in/group, out, 2]
    group: int  # inputs per row of scale_and_offset: one of KERNEL_GROUPS
    out_features: int


def unpack_int4(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words holding 8 nibbles (element i at bits 4i..4i+3) -> uint values 0..15 along ``dim``."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    if dim == 0:
        vals = (packed.unsqueeze(1) >> shifts.view(1, 8, 1)) & 0xF  # [rows/8, 8, cols]
        return vals.reshape(packed.shape[0] * 8, packed.shape[1])
    vals = (packed.unsqueeze(-1) >> shifts.view(1, 1, 8)) & 0xF  # [rows, cols/8, 8]
    return vals.reshape(packed.shape[0], packed.shape[1] * 8)


def group_inputs(group_size: int, in_features: int) -> int:
    """Inputs per scale: vLLM writes -1 (and some checkpoints 0) for one group over all inputs."""
    return in_features if group_size in (-1, 0) else group_size


def dequantize(
    w_q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """[in/8, out] packed (input-major, as vLLM holds it after loading) -> [in, out] in ``dtype``.

    ``scales``: [groups, out]; ``zeros``: [groups, out/8] packed along outputs, or None for the
    symmetric ``uint4b8`` type (zero point 8).
    """
    q = unpack_int4(w_q, 0).to(dtype)
    group = group_inputs(group_size, q.shape[0])
    s = scales.to(dtype).repeat_interleave(group, dim=0)
    z = 8 if zeros is None else unpack_int4(zeros, 1).to(dtype).repeat_interleave(group, dim=0)
    return (q - z) * s


def dequantize_matmul(
    x: torch.Tensor,
    w_q: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fallback: ``x @ W (+ bias)`` unpacking the whole weight (vLLM's layout) on every call."""
    weight = dequantize(w_q, scales, zeros, group_size, x.dtype)
    out = x.reshape(-1, x.shape[-1]) @ weight
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.reshape(*x.shape[:-1], weight.shape[1])


def kernel_available() -> bool:
    ops = torch.ops.aten
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")


def unsupported_reason(in_features: int, out_features: int, group_size: int) -> str | None:
    """Why the int4 kernel cannot take this layer, or None."""
    if not kernel_available():
        return f"torch {torch.__version__} has no aten._weight_int4pack_mm_for_cpu (needs torch >= 2.6)"
    if in_features % 32 or out_features % 32:
        return (
            f"in_features={in_features}, out_features={out_features}: the int4 kernel needs multiples of 32"
        )
    group = group_inputs(group_size, in_features)
    if group % 32 or in_features % group:
        return f"group_size={group_size}: the int4 kernel needs groups that are a multiple of 32 and divide {in_features}"
    return None


def pack(w_q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int) -> PackedInt4:
    """vLLM's loaded layout -> the kernel's; call :func:`unsupported_reason` first."""
    in_features, out_features = w_q.shape[0] * 8, w_q.shape[1]
    group = group_inputs(group_size, in_features)
    kernel_group = next(g for g in KERNEL_GROUPS if group % g == 0)
    q = unpack_int4(w_q, 0).t().contiguous()  # [out, in] int32, values 0..15
    weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    scale = scales.float()
    zero = torch.full_like(scale, 8.0) if zeros is None else unpack_int4(zeros, 1).float()
    pairs = torch.stack([scale, (8.0 - zero) * scale], dim=-1)  # [groups, out, 2]
    pairs = pairs.repeat_interleave(group // kernel_group, dim=0).to(torch.bfloat16).contiguous()
    return PackedInt4(weight=weight, scale_and_offset=pairs, group=kernel_group, out_features=out_features)


def matmul(x: torch.Tensor, packed: PackedInt4, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W (+ bias)`` for x [..., in] of any float dtype; the result has x's dtype."""
    rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
    out: torch.Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(
        rows, packed.weight, packed.group, packed.scale_and_offset
    )
    out = out.to(x.dtype)
    if bias is not None:
        out = out + bias.to(x.dtype)
    return out.reshape(*x.shape[:-1], packed.out_features)
