"""Run W4A16 layers through vLLM's own compressed-tensors scheme with llmfab's plugin registered.

Run by the serving venv's python (``python -m tests.serving.vllm_int4_layers CASES OUT``): each case in
the ``torch.save``d list holds a checkpoint's tensors as our quantizer writes them (``weight_packed``
[out, in/8], ``weight_scale`` [out, groups], ``weight_zero_point`` [out/8, groups] or absent), the
group size, the dtype, an input and maybe a bias. vLLM creates the layer's parameters, we copy the
tensors in where its weight loader would, vLLM transposes them and calls the (patched) kernel; the
output and the path the plugin took are written to OUT for the test to compare.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import torch


def init_single_process_vllm() -> None:
    """vLLM's parameters ask the tensor-parallel group for their rank: a group of one, over gloo."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"tcp://127.0.0.1:{port}")  # fmt: skip
        initialize_model_parallel(1, 1)


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    from vllm.model_executor.layers.quantization.compressed_tensors.schemes.compressed_tensors_wNa16 import (
        CompressedTensorsWNA16,
    )

    out_features, in_features = case["weight_packed"].shape[0], case["weight_packed"].shape[1] * 8
    symmetric = "weight_zero_point" not in case
    group = case["group_size"]
    scheme = CompressedTensorsWNA16(strategy="channel" if group == -1 else "group", num_bits=4,
                                    group_size=None if group == -1 else group, symmetric=symmetric)  # fmt: skip
    layer = torch.nn.Module()
    scheme.create_weights(layer, output_size=out_features, input_size=in_features,
                          output_partition_sizes=[out_features], input_size_per_partition=in_features,
                          params_dtype=case["dtype"], weight_loader=None)  # fmt: skip
    for name in ("weight_packed", "weight_scale", "weight_zero_point"):
        if name in case:
            getattr(layer, name).data.copy_(case[name])
    scheme.process_weights_after_loading(layer)
    y = scheme.apply_weights(layer, case["x"], case.get("bias"))
    path = "torch-int4" if getattr(layer, "llmfab_int4", None) is not None else "dequantize" if getattr(
        layer, "llmfab_dequantize", False) else "native"  # fmt: skip
    return {"y": y, "path": path, "kernel": type(scheme.kernel).__name__}


def main() -> None:
    from llmfab.serving import vllm_plugin

    vllm_plugin.register()
    init_single_process_vllm()
    cases = torch.load(sys.argv[1])
    torch.save([run_case(c) for c in cases], sys.argv[2])


if __name__ == "__main__":
    main()
