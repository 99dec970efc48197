"""A width-pruned model (half the attention heads, so heads · head_dim < hidden, and half the MLP
channels) served by the real vLLM through ``llmfab serve run``: vLLM reads ``head_dim`` from the
config and computes what transformers computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .conftest import TinySetup, free_port, logprob_gaps, requires_serve_venv, start_service

pytestmark = [pytest.mark.slow, pytest.mark.serve]


def _pruned_model(tiny: TinySetup, out: Path) -> Path:
    from llmfab.compress.width_pruning import activation_importance, prune_width
    from llmfab.data.shards import DatasetInfo
    from llmfab.data.token_windows import WindowSampler
    from llmfab.model.hf import export_hf, load_hf

    model, args = load_hf(tiny.bf16)
    windows = WindowSampler(DatasetInfo.load(tiny.dataset).split("train"), 64, 0).next_batch(32, 0, 1)[:, :-1]
    importance = activation_importance(model, list(torch.split(windows, 8)))
    state, small = prune_width(model.state_dict(), args, importance, intermediate=args.intermediate // 2,
                               heads=args.heads // 2)
    assert small.heads * small.head_dim < small.hidden
    return export_hf(state, small, tiny.bf16, out, dtype="bfloat16")


def test_vllm_serves_a_head_pruned_llama_as_transformers_computes_it(tiny: TinySetup, tmp_path: Path) -> None:
    requires_serve_venv()
    model_dir = _pruned_model(tiny, tmp_path / "pruned")
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["num_attention_heads"], config["head_dim"], config["hidden_size"]) == (2, 32, 128)
    spec = {"model": {"path": str(model_dir)}, "quantization": {"method": "none"},
            "server": {"port": free_port(), "maxModelLen": 256, "maxNumSeqs": 4, "servedModelName": "pruned"}}  # fmt: skip
    with start_service(tiny, tmp_path, "pruned-svc", spec) as server:
        diffs = logprob_gaps(server.url, "pruned", model_dir)
    assert max(diffs) < 0.15 and sum(diffs) / len(diffs) < 0.05, diffs
