"""llmfab's torch fallback for vLLM's 4-bit CPU GEMM, checked against our quantizer without vLLM.

vLLM holds a compressed-tensors W4A16 layer, after loading, as the checkpoint tensors transposed:
``weight_packed`` [in/8, out], ``weight_scale`` [groups, out], ``weight_zero_point`` [groups, out/8].
The fallback must turn exactly that back into the weights we quantized.
"""

from __future__ import annotations

import pytest
import torch

from llmfab.compress.gptq import rtn_quantize
from llmfab.compress.quantize import _pack
from llmfab.serving.vllm_plugin import dequantize, unpack_int4


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [32, 128])
def test_dequantize_inverts_the_checkpoint_layout_vllm_holds(symmetric: bool, group: int) -> None:
    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(1))
    qw = rtn_quantize(w, group, symmetric=symmetric)
    packed = _pack(qw, group, symmetric)
    zp = None if symmetric else packed["weight_zero_point"].t()
    weight = dequantize(packed["weight_packed"].t(), packed["weight_scale"].t(), zp, group, torch.bfloat16)
    assert weight.shape == (256, 96)
    assert torch.equal(weight, qw.dequantized.t().to(torch.bfloat16))


def test_unpack_int4_orders_nibbles_low_first() -> None:
    word = torch.tensor([[0x76543210]], dtype=torch.int32)
    assert unpack_int4(word, 1).tolist() == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert unpack_int4(word, 0).flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
