"""The GPU branches of ``benchmarks/train_throughput.py`` and the MFU arithmetic, checked without a GPU:
argument defaults per device, the torchrun relaunch, the spec llmfab's side trains with, the profile's
kernel classes, and MFU of a GPT-2-small-class model on a named GPU (nothing here is timed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from llmfab.model.transformer import ModelArgs, Transformer
from llmfab.training.components.distributed import DistEnv
from llmfab.training.components.metrics import flops_per_token, model_flops_utilization, peak_flops
from llmfab.training.loop import trainer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench() -> object:
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_throughput"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_cpu_defaults_are_the_cpu_benchmark(bench: object) -> None:
    a = bench.parse_args(["--device", "cpu"])  # type: ignore[attr-defined]
    assert (a.shape, a.precision, a.compile, a.warmup) == (["bench"], ["fp32", "bf16"], False, 1)
    assert bench.parse_args(["--device", "cpu", "--small"]).shape == ["small"]  # type: ignore[attr-defined]


def test_cuda_defaults_are_bf16_compiled_gpt2_small_and_large(bench: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    a = bench.parse_args([])  # type: ignore[attr-defined]
    assert (a.device, a.shape, a.precision, a.compile, a.warmup) == ("cuda", ["gpt2-small", "large"], ["bf16"], True, 3)
    shapes = bench.SHAPES  # type: ignore[attr-defined]
    assert (shapes["gpt2-small"].layers, shapes["gpt2-small"].hidden, shapes["gpt2-small"].ctx) == (12, 768, 1024)
    assert (shapes["large"].layers, shapes["large"].hidden, shapes["large"].heads, shapes["large"].ctx) == (12, 1024, 16, 512)
    assert bench.parse_args(["--compile", "off"]).compile is False  # type: ignore[attr-defined]


def test_cuda_without_a_gpu_is_refused_with_the_fix(bench: object, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cuda"])  # type: ignore[attr-defined]
    assert "--device cpu" in capsys.readouterr().err


def test_several_gpus_relaunch_under_torchrun_once(bench: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    argv = bench.torchrun_argv(["--device", "cuda", "--profile"], 8)  # type: ignore[attr-defined]
    assert argv[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=8"]
    assert argv[5] == str(SCRIPT) and argv[6:] == ["--device", "cuda", "--profile"]
    assert bench.torchrun_argv([], 1) is None  # type: ignore[attr-defined]
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert bench.torchrun_argv([], 8) is None  # type: ignore[attr-defined]


def test_llmfab_side_trains_the_spec_defaults_at_the_shape(bench: object) -> None:
    shape = bench.SHAPES["gpt2-small"]  # type: ignore[attr-defined]
    spec = bench.llmfab_spec(shape, "bf16", True, 8)  # type: ignore[attr-defined]
    assert spec.batch.global_tokens == shape.batch * shape.ctx * 8 and spec.batch.micro_batch_size == shape.batch
    assert (spec.model.layers, spec.model.hidden, spec.model.heads, spec.model.context_length) == (12, 768, 12, 1024)
    assert spec.compile and spec.precision == "bf16" and spec.parallelism.fsdp
    assert spec.optimizer.grad_clip == 1.0 and spec.loss_chunk_tokens == 4096  # the defaults users get


@pytest.mark.parametrize(("kernel", "kind"), [
    ("aten::mm", "matmul"), ("nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "matmul"),
    ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("triton_poi_fused_mul_silu_0", "other"), ("aten::_fused_adamw_", "other"),
])
def test_profile_classes(bench: object, kernel: str, kind: str) -> None:
    assert bench.classify(kernel) == kind  # type: ignore[attr-defined]


def test_peak_flops_by_published_dense_bf16_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMFAB_PEAK_FLOPS", raising=False)
    assert peak_flops("NVIDIA H200") == peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12  # not the SXM figure
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("Intel(R) Xeon(R) Processor") is None
    monkeypatch.setenv("LLMFAB_PEAK_FLOPS", "2e12")
    assert peak_flops(None) == 2e12


def test_mfu_is_model_flops_over_the_peak_of_all_devices() -> None:
    assert model_flops_utilization(1e5, 1e9, 1e15) == pytest.approx(0.1)
    assert model_flops_utilization(1e5, 1e9, 1e15, devices=4) == pytest.approx(0.025)
    assert model_flops_utilization(1e5, 1e9, None) is None


def test_trainer_mfu_of_gpt2_small_on_an_h200(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's own MFU (the training loop's metric; the benchmark prints the same 6N + attention
    FLOPs over the same peak for each implementation), on the CUDA branch, for a 12×768 model."""
    monkeypatch.delenv("LLMFAB_PEAK_FLOPS", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    args = ModelArgs(vocab_size=50304, layers=12, hidden=768, heads=12, kv_heads=12, intermediate=2048,
                     context_length=1024, sharing_groups=12)
    with torch.device("meta"):
        model = Transformer(args)
    n = model.num_parameters()
    per_layer = 768 * 3 * 768 + 768 * 768 + 3 * 768 * 2048 + 2 * 768
    assert n == 12 * per_layer + 50304 * 768 + 768  # tied head counted once (its matmul is the 6N share)
    parts = trainer.Parts(args, model, None, None, n, {})  # type: ignore[arg-type]
    env = DistEnv(rank=0, local_rank=0, world_size=2, device=torch.device("cuda", 0))
    flops = flops_per_token(n, 12, 768, 1024)
    assert flops == 6 * n + 12 * 12 * 768 * 1024
    mfu = trainer.mfu_function(parts, 1024, env)
    assert mfu(1e6) == pytest.approx(1e6 * flops / (2 * 989e12))
    # ALBERT-style sharing: a block applied k times costs k times its FLOPs.
    shared = ModelArgs(vocab_size=96, layers=4, hidden=32, heads=4, kv_heads=4, intermediate=64,
                       context_length=16, sharing_groups=2)
    with torch.device("meta"):
        small = Transformer(shared)
    block = sum(p.numel() for p in small.blocks[0].parameters())
    parts = trainer.Parts(shared, small, None, None, small.num_parameters(), {})  # type: ignore[arg-type]
    expected = flops_per_token(small.num_parameters() + 2 * block, 4, 32, 16)
    assert trainer.mfu_function(parts, 16, env)(1e6) == pytest.approx(1e6 * expected / (2 * 989e12))


def test_cpu_run_times_each_implementation_in_its_own_process(bench: object, capsys: pytest.CaptureFixture[str]) -> None:
    """The CPU path end to end at a tiny shape: llmfab and transformers each in a spawned process,
    alternating rounds, the report with page faults, the profile split; both processes end."""
    import multiprocessing

    bench.main(["--device", "cpu", "--shape", "tiny", "--precision", "fp32", "--rounds", "2", "--steps", "1",  # type: ignore[attr-defined]
                "--warmup", "1", "--nanogpt", "", "--profile"])
    out = capsys.readouterr().out
    assert "each implementation in its own process (peers' malloc: default)" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if "GFLOP/token" in line}
    assert set(rows) == {"llmfab", "transformers"}
    for row in rows.values():
        assert float(row[1]) > 0 and row[-2] == "faults" and int(row[-1]) >= 0
    assert "llmfab / transformers:" in out and "self time of one step (s)" in out
    assert not multiprocessing.active_children()
