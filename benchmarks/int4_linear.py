"""One decoder layer's linears, bf16 vs W4A16 CPU kernels, timed interleaved in one process.

The end-to-end numbers of ``serve_latency.py`` move by tens of percent with the load of a shared
machine; this times only the four linear layers of a Llama block (fused q/k/v, o, fused gate/up,
down, as vLLM runs them) at a decode batch of M rows, each kernel in turn, round after round, and
reports medians, so every kernel sees the same load. Kernels:

- ``bf16``: what vLLM runs for an unquantized linear on CPU, its oneDNN handle
  (``ops.create_onednn_mm``), or ``F.linear`` where oneDNN refuses (it does on AVX2: no bf16 there);
- ``llmfab-int4``: ``llmfab.serving.int4_cpu.matmul`` (the plugin's kernel);
- ``vllm-native``: vLLM's ``CPUWNA16LinearKernel`` (``cpu_gemm_wna16``), where this vLLM build has it;
- ``dequantize``: the plugin's old path and fallback, unpacking the weight on every call.

Run with the serving venv: ``.venv-serve/bin/python benchmarks/int4_linear.py --hidden 512 1024``.
``--emulate-avx2`` re-runs itself as ``serve_latency.py --emulate-avx2`` serves (vLLM's AVX2 build,
torch's AVX2 kernels, oneDNN capped at AVX2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def block_linears(hidden: int) -> list[tuple[str, int, int]]:
    """(name, in, out) of one block of the ``--random LxH`` models (intermediate 3H, heads of 64)."""
    return [("qkv", hidden, 3 * hidden), ("o", hidden, hidden), ("gate_up", hidden, 6 * hidden),
            ("down", 3 * hidden, hidden)]  # fmt: skip


def quantized(in_f: int, out_f: int, group: int) -> dict[str, torch.Tensor]:
    """RTN-quantized random weight, in the checkpoint's tensors (what vLLM loads)."""
    from llmfab.compress.gptq import rtn_quantize
    from llmfab.compress.quantize import _pack

    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(in_f * out_f)) * 0.02
    tensors = _pack(rtn_quantize(w, group, symmetric=True), group, True)
    return {"packed": tensors["weight_packed"], "scale": tensors["weight_scale"], "dense": w.to(torch.bfloat16)}


def vllm_native(t: dict[str, torch.Tensor], in_f: int, out_f: int, group: int) -> Callable[[torch.Tensor], torch.Tensor]:
    from vllm.model_executor.layers.quantization.compressed_tensors.schemes.compressed_tensors_wNa16 import (
        CompressedTensorsWNA16,
    )

    scheme = CompressedTensorsWNA16(strategy="group", num_bits=4, group_size=group, symmetric=True)
    layer = torch.nn.Module()
    scheme.create_weights(layer, output_size=out_f, input_size=in_f, output_partition_sizes=[out_f],
                          input_size_per_partition=in_f, params_dtype=torch.bfloat16, weight_loader=None)  # fmt: skip
    layer.weight_packed.data.copy_(t["packed"])
    layer.weight_scale.data.copy_(t["scale"])
    scheme.process_weights_after_loading(layer)
    return lambda x: scheme.apply_weights(layer, x, None)


def bf16_linear(w: torch.Tensor) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    from vllm import _custom_ops as ops

    try:
        handle = ops.create_onednn_mm(w.t(), 32)
        return "oneDNN", lambda x: ops.onednn_mm(handle, x, None)
    except RuntimeError:
        return "F.linear", lambda x: torch.nn.functional.linear(x, w)


def kernels(hidden: int, group: int, native: bool) -> tuple[dict[str, list[Callable[[torch.Tensor], torch.Tensor]]], str]:
    """Per kernel, one callable per linear of the block (each takes [M, in] bf16)."""
    from llmfab.serving import int4_cpu

    out: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {"bf16": [], "llmfab-int4": [], "dequantize": []}
    if native:
        out["vllm-native"] = []
    bf16_path = ""
    for _, in_f, out_f in block_linears(hidden):
        t = quantized(in_f, out_f, group)
        bf16_path, fn = bf16_linear(t["dense"])
        out["bf16"].append(fn)
        w_q, scales = t["packed"].t().contiguous(), t["scale"].t().contiguous()
        packed = int4_cpu.pack(w_q, scales, None, group)
        out["llmfab-int4"].append(lambda x, p=packed: int4_cpu.matmul(x, p))
        out["dequantize"].append(lambda x, a=w_q, s=scales: int4_cpu.dequantize_matmul(x, a, s, None, group))
        if native:
            out["vllm-native"].append(vllm_native(t, in_f, out_f, group))
    return out, bf16_path


def time_block(fns: list[Callable[[torch.Tensor], torch.Tensor]], xs: list[torch.Tensor], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for fn, x in zip(fns, xs, strict=True):
            fn(x)
    return (time.perf_counter() - start) / repeat * 1000


def run(args: argparse.Namespace) -> None:
    from vllm.platforms import current_platform

    from tests.serving.vllm_int4_layers import init_single_process_vllm

    current_platform.import_kernels()
    init_single_process_vllm()
    torch.set_num_threads(args.threads)
    native = hasattr(torch.ops._C, "cpu_gemm_wna16")
    print(f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, vLLM cpu_gemm_wna16 {'present' if native else 'missing'}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    for hidden in args.hidden:
        table, bf16_path = kernels(hidden, args.group, native)
        print(f"\nhidden {hidden} (one block: {', '.join(f'{n} {i}x{o}' for n, i, o in block_linears(hidden))}), "
              f"g{args.group}; bf16 through {bf16_path}; ms per block, median of {args.rounds} interleaved rounds")  # fmt: skip
        print("| M | " + " | ".join(table) + " | llmfab-int4 / bf16 speed |\n|---|" + "---|" * (len(table) + 1))
        for m in args.rows:
            xs = [torch.randn(m, i).to(torch.bfloat16) for _, i, _ in block_linears(hidden)]
            repeat = 3 if m <= 16 else 1
            times: dict[str, list[float]] = {k: [] for k in table}
            for _ in range(3):  # warm-up: oneDNN builds its kernels for a new M on first use
                for k, fns in table.items():
                    time_block(fns, xs, 1 if k == "dequantize" else repeat)
            for _ in range(args.rounds):
                for k, fns in table.items():
                    times[k].append(time_block(fns, xs, 1 if k == "dequantize" else repeat))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"| {m} | " + " | ".join(f"{med[k]:.2f}" for k in table)
                  + f" | {med['bf16'] / med['llmfab-int4']:.2f}x |", flush=True)  # fmt: skip
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 16, 128], help="M: tokens in the batch")
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="1: a shared machine's load hurts OpenMP teams less")
    p.add_argument("--emulate-avx2", action="store_true")
    args = p.parse_args()
    if args.emulate_avx2 and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        from serve_latency import emulate_avx2

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        emulate_avx2(env, Path(tempfile.mkdtemp(prefix="int4-linear-")))
        argv = [a for a in sys.argv[1:] if a != "--emulate-avx2"]
        raise SystemExit(subprocess.call([sys.executable, __file__, *argv], env=env))
    run(args)


if __name__ == "__main__":
    main()
