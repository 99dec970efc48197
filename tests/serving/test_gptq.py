"""The quantization math, without a model: fast (< 2 s)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmfab.compress.gptq import HessianAccumulator, gptq_quantize, rtn_quantize
from llmfab.compress.quantize import QuantizationError, _pack, choose_group_size


@pytest.fixture(scope="module")
def layer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g)
    # Correlated inputs with uneven scales: where GPTQ's error feedback pays off.
    x = torch.randn(2048, 256, generator=g) @ (torch.randn(256, 256, generator=g) * 0.1) + torch.randn(256, generator=g)
    acc = HessianAccumulator(256)
    for chunk in x.split(300):
        acc.add(chunk)
    return w, x, acc.h


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float(((x @ w.T - x @ w_hat.T) ** 2).mean())


def test_hessian_accumulates_the_mean_of_2xxT(layer: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    _, x, h = layer
    assert torch.allclose(h, 2 * x.double().T @ x.double() / len(x))


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_has_lower_output_error_than_rtn(layer: tuple[torch.Tensor, ...], symmetric: bool) -> None:
    w, x, h = layer
    rtn = rtn_quantize(w, 128, symmetric=symmetric)
    gptq = gptq_quantize(w, h, 128, symmetric=symmetric)
    assert output_error(x, w, gptq.dequantized) < 0.7 * output_error(x, w, rtn.dequantized)


@pytest.mark.parametrize("symmetric", [True, False])
def test_integers_scales_and_dequantization_agree(layer: tuple[torch.Tensor, ...], symmetric: bool) -> None:
    w, _, h = layer
    for qw in (rtn_quantize(w, 64, symmetric=symmetric), gptq_quantize(w, h, 64, symmetric=symmetric)):
        assert qw.scale.shape == (64, 4) and qw.scale.dtype == torch.bfloat16
        assert int(qw.q.min()) >= -8 and int(qw.q.max()) <= 7
        if symmetric:
            assert not qw.zero_point.any()
        s = qw.scale.float().repeat_interleave(64, dim=1)
        z = qw.zero_point.float().repeat_interleave(64, dim=1)
        assert torch.equal((qw.q.float() - z) * s, qw.dequantized)


@pytest.mark.parametrize("symmetric", [True, False])
def test_compressed_tensors_pack_roundtrip(layer: tuple[torch.Tensor, ...], symmetric: bool) -> None:
    """What the library packs and unpacks is exactly our dequantized weight (no re-rounding drift)."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    w, _, h = layer
    qw = gptq_quantize(w, h, 128, symmetric=symmetric)
    packed = _pack(qw, 128, symmetric)
    assert packed["weight_packed"].dtype == torch.int32 and packed["weight_packed"].shape == (64, 32)
    assert ("weight_zero_point" in packed) == (not symmetric)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=128)
    out = PackedQuantizationCompressor.decompress(packed, QuantizationScheme(targets=["Linear"], weights=args))
    # The library dequantizes in the scale's dtype (bf16): (q - z) * s is exact there too.
    assert torch.equal(out["weight"], qw.dequantized.to(torch.bfloat16))


def test_constant_zero_group_does_not_divide_by_zero() -> None:
    w = torch.zeros(32, 64)
    w[:, 32:] = torch.randn(32, 32)
    qw = rtn_quantize(w, 32)
    assert torch.isfinite(qw.dequantized).all() and not qw.dequantized[:, :32].any()


def linears(*shapes: tuple[int, int]) -> list[tuple[str, nn.Linear]]:
    return [(f"model.layers.0.l{i}", nn.Linear(i_f, o_f, bias=False)) for i, (i_f, o_f) in enumerate(shapes)]


def test_group_size_is_kept_or_shrunk_to_divide_every_layer() -> None:
    assert choose_group_size(linears((256, 128), (512, 256)), 128) == 128
    assert choose_group_size(linears((96, 64), (192, 96)), 128) == 96
    assert choose_group_size(linears((160, 64)), 128) == 80


def test_layer_size_not_multiple_of_32_is_rejected_naming_layer_and_rule() -> None:
    with pytest.raises(QuantizationError, match=r"layer model\.layers\.0\.l1: out_features=48 .*multiple of 32"):
        choose_group_size(linears((64, 64), (64, 48)), 128)


def test_odd_group_size_is_rejected() -> None:
    with pytest.raises(QuantizationError, match=r"groupSize: 33 is not even"):
        choose_group_size(linears((64, 64)), 33)
