"""llmfab's int4 CPU kernel for vLLM (``int4_cpu`` + the ``vllm_plugin`` that wires it in).

vLLM holds a compressed-tensors W4A16 layer, after loading, as the checkpoint tensors transposed:
``weight_packed`` [in/8, out], ``weight_scale`` [groups, out], ``weight_zero_point`` [groups, out/8].
The kernel must compute, from exactly that, what the weights we quantized compute; checked here
against our quantizer's own dequantized weights, without vLLM and then through vLLM's own scheme.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from llmfab.compress.gptq import rtn_quantize
from llmfab.compress.quantize import _pack, load_dequantized
from llmfab.serving import int4_cpu
from llmfab.serving.int4_cpu import dequantize, unpack_int4
from llmfab.serving.vllm_plugin import ENV_VAR, choose_kernel, prepare_layer, requested_mode

from .conftest import (
    REPO,
    SERVE_PYTHON,
    LiveServer,
    TinySetup,
    free_port,
    logprob_gaps,
    requires_serve_venv,
    start_service,
)

IN, OUT = 384, 96  # OUT is a multiple of 32 but not of 64: a partial block of the AVX-512 layout


def checkpoint_layer(group: int, symmetric: bool, seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(tensors as our quantizer writes them, the dequantized fp32 weight [out, in] they stand for)."""
    w = torch.randn(OUT, IN, generator=torch.Generator().manual_seed(seed))
    size = IN if group == -1 else group
    qw = rtn_quantize(w, size, symmetric=symmetric)
    tensors = _pack(qw, size, symmetric)
    tensors.pop("weight_shape")
    if symmetric:
        tensors.pop("weight_zero_point", None)
    return tensors, qw.dequantized


def vllm_layout(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    zp = t.get("weight_zero_point")
    return t["weight_packed"].t(), t["weight_scale"].t(), None if zp is None else zp.t()


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [32, 128])
def test_dequantize_inverts_the_checkpoint_layout_vllm_holds(symmetric: bool, group: int) -> None:
    tensors, dequantized = checkpoint_layer(group, symmetric)
    weight = dequantize(*vllm_layout(tensors), group, torch.bfloat16)
    assert weight.shape == (IN, OUT)
    assert torch.equal(weight, dequantized.t().to(torch.bfloat16))


def test_unpack_int4_orders_nibbles_low_first() -> None:
    word = torch.tensor([[0x76543210]], dtype=torch.int32)
    assert unpack_int4(word, 1).tolist() == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert unpack_int4(word, 0).flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


# 96 and -1 (channelwise, 384) are larger than a kernel group: several kernel groups share a scale.
@pytest.mark.parametrize("group", [32, 64, 128, 96, -1])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int4_kernel_equals_dequantize_then_matmul(group: int, symmetric: bool, dtype: torch.dtype) -> None:
    tensors, dequantized = checkpoint_layer(group, symmetric)
    w_q, scales, zeros = vllm_layout(tensors)
    assert int4_cpu.unsupported_reason(IN, OUT, group) is None
    packed = int4_cpu.pack(w_q, scales, zeros, group)
    assert packed.weight.numel() == IN * OUT // 2  # still 4 bits a weight
    x = torch.randn(2, 3, IN, generator=torch.Generator().manual_seed(2)).to(dtype)
    bias = torch.randn(OUT).to(dtype)
    y = int4_cpu.matmul(x, packed, bias)
    assert y.shape == (2, 3, OUT) and y.dtype == dtype
    ref = x.double() @ dequantized.t().double() + bias.double()
    # bf16 activations and bf16 output rounding: ~2e-3 here; a wrong nibble or group order gives ~1.
    assert relative_error(y, ref) < 1e-2
    one = int4_cpu.matmul(x[0, :1], packed)  # a decode step: one row
    assert relative_error(one, x[0, :1].double() @ dequantized.t().double()) < 1e-2


@pytest.mark.parametrize(
    ("in_features", "out_features", "group", "words"),
    [(384, 96, 48, "group_size=48"), (384, 96, 16, "group_size=16"), (80, 96, 16, "in_features=80"),
     (384, 72, 128, "out_features=72")],
)  # fmt: skip
def test_shapes_the_kernel_cannot_take_get_a_reason(in_features: int, out_features: int, group: int, words: str) -> None:
    reason = int4_cpu.unsupported_reason(in_features, out_features, group)
    assert reason is not None and words in reason


def test_a_layer_the_kernel_cannot_take_keeps_its_layout_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    tensors, dequantized = checkpoint_layer(48, symmetric=False)
    params = [torch.nn.Parameter(t.contiguous(), requires_grad=False) for t in vllm_layout(tensors)]  # type: ignore[arg-type]
    before = [p.data.clone() for p in params]
    layer = torch.nn.Module()
    layer.prefix = "model.layers.0.mlp.down_proj"
    with caplog.at_level(logging.INFO, logger="vllm.llmfab_int4"):
        prepare_layer(layer, params[0], params[1], params[2], 48)
    assert layer.llmfab_int4 is None and layer.llmfab_dequantize
    assert all(torch.equal(p.data, b) for p, b in zip(params, before, strict=True))
    assert "model.layers.0.mlp.down_proj falls back" in caplog.text and "group_size=48" in caplog.text
    x = torch.randn(4, IN, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    y = int4_cpu.dequantize_matmul(x, *(p.data for p in params), 48)  # what apply() then runs
    assert relative_error(y, x.double() @ dequantized.t().double()) < 1e-2


def test_a_packed_layer_holds_only_the_packed_tensors() -> None:
    tensors, _ = checkpoint_layer(64, symmetric=False)
    params = [torch.nn.Parameter(t.contiguous(), requires_grad=False) for t in vllm_layout(tensors)]  # type: ignore[arg-type]
    layer = torch.nn.Module()
    prepare_layer(layer, params[0], params[1], params[2], 64)
    packed = layer.llmfab_int4
    assert params[0].dtype == torch.uint8 and params[0].data_ptr() == packed.weight.data_ptr()
    assert params[1].data_ptr() == packed.scale_and_offset.data_ptr() and params[2].numel() == 0


def test_the_override_is_checked_and_picks_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert requested_mode() == "auto"
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=f"{ENV_VAR}='fast' is not one of auto, torch-int4, native"):
        requested_mode()
    assert choose_kernel("auto", native_available=True) == "native"
    assert choose_kernel("auto", native_available=False) == "torch-int4"
    assert choose_kernel("torch-int4", native_available=True) == "torch-int4"
    assert choose_kernel("native", native_available=True) == "native"
    with pytest.raises(RuntimeError, match=f"{ENV_VAR}=native, but this vLLM build has no .*cpu_gemm_wna16"):
        choose_kernel("native", native_available=False)


# --- through vLLM -----------------------------------------------------------------------------


def run_in_vllm(cases: list[dict[str, Any]], tmp_path: Path, mode: str) -> list[dict[str, Any]]:
    requires_serve_venv()
    torch.save(cases, tmp_path / "cases.pt")
    env = {**os.environ, "PYTHONPATH": str(REPO), ENV_VAR: mode}
    r = subprocess.run([str(SERVE_PYTHON), "-m", "tests.serving.vllm_int4_layers", str(tmp_path / "cases.pt"),
                        str(tmp_path / "out.pt")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:]
    results: list[dict[str, Any]] = torch.load(tmp_path / "out.pt")
    return results


@pytest.mark.serve
def test_vllm_layers_run_llmfab_kernel_when_forced(tmp_path: Path) -> None:
    """vLLM's own scheme loads, transposes and calls the patched kernel: every layout computes the
    quantized weights' product; a group the kernel cannot take runs the dequantize fallback."""
    layouts = [(128, True, torch.bfloat16), (64, False, torch.bfloat16), (-1, True, torch.bfloat16),
               (96, False, torch.float32), (16, False, torch.bfloat16)]  # fmt: skip
    cases, references = [], []
    for i, (group, symmetric, dtype) in enumerate(layouts):
        tensors, dequantized = checkpoint_layer(group, symmetric, seed=i)
        x = torch.randn(5, IN, generator=torch.Generator().manual_seed(10 + i)).to(dtype)
        bias = torch.randn(OUT).to(dtype) if i == 1 else None
        cases.append({**tensors, "group_size": group, "dtype": dtype, "x": x, "bias": bias})
        references.append(x.double() @ dequantized.t().double() + (0 if bias is None else bias.double()))
    results = run_in_vllm(cases, tmp_path, "torch-int4")
    assert [r["kernel"] for r in results] == ["CPUWNA16LinearKernel"] * len(layouts)
    assert [r["path"] for r in results] == ["torch-int4"] * 4 + ["dequantize"]
    for (group, symmetric, dtype), result, ref in zip(layouts, results, references, strict=True):
        assert result["y"].dtype == dtype
        assert relative_error(result["y"], ref) < 1e-2, (group, symmetric, dtype)


# --- served end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_int4_server(tiny: TinySetup, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny model, RTN asymmetric g64, served with ``LLMFAB_VLLM_INT4=torch-int4``."""
    spec = {
        "model": {"path": str(tiny.bf16)},
        "quantization": {"algorithm": "rtn", "groupSize": 64, "symmetric": False},
        "server": {"port": free_port(), "maxModelLen": 256, "maxNumSeqs": 4, "servedModelName": "tiny-int4"},
    }
    env = {"PYTHONPATH": str(REPO), ENV_VAR: "torch-int4"}
    with start_service(tiny, tmp_path_factory.mktemp("int4"), "int4-svc", spec, env) as server:
        yield server


@pytest.mark.slow
@pytest.mark.serve
def test_vllm_serves_4bit_with_llmfab_kernel_as_transformers_computes(torch_int4_server: LiveServer) -> None:
    model_dir = torch_int4_server.root / "services" / torch_int4_server.name / "model-4bit"
    weights = json.loads((model_dir / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert (weights["weights"]["group_size"], weights["weights"]["symmetric"]) == (64, False)
    diffs = logprob_gaps(torch_int4_server.url, "tiny-int4", model_dir, load_dequantized(model_dir))
    log = torch_int4_server.log.read_text()
    assert f"4-bit CPU kernel = torch-int4 ({ENV_VAR}=torch-int4" in log
    assert "falls back" not in log
    assert max(diffs) < 0.15 and sum(diffs) / len(diffs) < 0.05, diffs
