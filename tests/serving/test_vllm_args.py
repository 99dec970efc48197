"""Spec -> vLLM argv/env, without vLLM."""

from __future__ import annotations

import json
from pathlib import Path

from llmfab.api.inference_service import ServerSpec
from llmfab.serving.vllm_args import build_launch, detect_quantization


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_cpu_launch_has_module_form_kv_cache_and_no_gpu_flags(tmp_path: Path) -> None:
    spec = ServerSpec(max_model_len=256, max_num_seqs=8, port=8123, cpu_kv_cache_gib=2, extra_args=["--seed", "1"])
    plan = build_launch(spec, tmp_path, "svc", "/py", tmp_path / "cache")
    assert plan.argv[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(plan.argv, "--model") == str(tmp_path)
    assert flag(plan.argv, "--served-model-name") == "svc"
    assert flag(plan.argv, "--dtype") == "bfloat16"
    assert flag(plan.argv, "--max-model-len") == "256"
    assert flag(plan.argv, "--max-num-seqs") == "8"
    assert flag(plan.argv, "--tensor-parallel-size") == "1"
    assert flag(plan.argv, "--port") == "8123" and flag(plan.argv, "--host") == "127.0.0.1"
    assert "--enforce-eager" in plan.argv and plan.argv[-2:] == ["--seed", "1"]
    assert "--gpu-memory-utilization" not in plan.argv
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert plan.env["VLLM_CACHE_ROOT"] == str(tmp_path / "cache")
    assert plan.url == "http://127.0.0.1:8123/v1"
    assert plan.quantization is None


def test_gpu_launch_sets_memory_utilization_not_cpu_kv_cache(tmp_path: Path) -> None:
    spec = ServerSpec(
        served_model_name="chat", gpu_memory_utilization=0.8, tensor_parallel_size=2, enforce_eager=False,
        host="0.0.0.0",
    )  # fmt: skip
    plan = build_launch(spec, tmp_path, "svc", "/py", tmp_path, gpu=True, port=9000)
    assert flag(plan.argv, "--gpu-memory-utilization") == "0.8"
    assert flag(plan.argv, "--tensor-parallel-size") == "2"
    assert flag(plan.argv, "--served-model-name") == "chat"
    assert "--enforce-eager" not in plan.argv and "VLLM_CPU_KVCACHE_SPACE" not in plan.env
    assert flag(plan.argv, "--port") == "9000"
    assert plan.url == "http://127.0.0.1:9000/v1"  # clients on this host reach 0.0.0.0 via loopback


def test_quantization_is_detected_from_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "compressed-tensors"}}))
    assert detect_quantization(tmp_path) == "compressed-tensors"
    assert build_launch(ServerSpec(), tmp_path, "s", "/py", tmp_path).quantization == "compressed-tensors"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert detect_quantization(tmp_path) is None
    assert detect_quantization(tmp_path / "missing") is None


def test_fractional_kv_cache_rounds_to_at_least_one_gib(tmp_path: Path) -> None:
    plan = build_launch(ServerSpec(cpu_kv_cache_gib=0.25), tmp_path, "s", "/py", tmp_path)
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def _config(tmp_path, hidden: int, heads: int):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": hidden, "num_attention_heads": heads}))
    return tmp_path


def test_head_size_vllm_cpu_cannot_run_is_refused_before_start(tmp_path) -> None:
    from llmfab.serving.vllm_args import unservable_reason

    reason = unservable_reason(_config(tmp_path, 192, 8), gpu=False)
    assert reason is not None and "attention head size 24" in reason and "spec.model.heads: 6" in reason
    assert unservable_reason(_config(tmp_path, 192, 6), gpu=False) is None
    assert unservable_reason(_config(tmp_path, 192, 8), gpu=True) is None
