"""A width-pruned model (half the attention heads, so heads · head_dim < hidden, and half the MLP
channels) served by the real vLLM through ``llmfab serve run``: vLLM reads ``head_dim`` from the
config and computes what transformers computes."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from .conftest import SERVE_PYTHON, TinySetup, free_port, requires_serve_venv, serve_command, write_service

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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    requires_serve_venv()
    model_dir = _pruned_model(tiny, tmp_path / "pruned")
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["num_attention_heads"], config["head_dim"], config["hidden_size"]) == (2, 32, 128)
    port = free_port()
    spec = {"model": {"path": str(model_dir)}, "quantization": {"method": "none"},
            "server": {"port": port, "maxModelLen": 256, "maxNumSeqs": 4, "servedModelName": "pruned"}}
    spec_file = write_service(tmp_path / "svc.yaml", "pruned-svc", spec)
    env = {**os.environ, "LLMFAB_HOME": str(tiny.root), "LLMFAB_SERVE_PYTHON": str(SERVE_PYTHON)}
    log = tmp_path / "serve.out"
    status_file = tiny.root / "services" / "pruned-svc.status.json"
    with log.open("w") as out:
        proc = subprocess.Popen(serve_command(spec_file), env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while not (status_file.exists() and '"readyReplicas": 1' in status_file.read_text()):
            assert proc.poll() is None, f"llmfab serve run exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"vLLM not ready in 600 s:\n{log.read_text()[-4000:]}"
            time.sleep(1)
        text = "The small cat reads a story near the river and the bright garden."
        body = {"model": "pruned", "prompt": text, "max_tokens": 8, "prompt_logprobs": 0, "temperature": 0}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            answer = json.load(r)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert answer["usage"]["completion_tokens"] == 8
    ids = AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    expected = [float(logp[i, t]) for i, t in enumerate(ids[1:])]
    served = answer["choices"][0]["prompt_logprobs"][1:]
    got = [entry[str(t)]["logprob"] for entry, t in zip(served, ids[1:], strict=True)]
    diffs = [abs(a - b) for a, b in zip(expected, got, strict=True)]
    assert max(diffs) < 0.15 and sum(diffs) / len(diffs) < 0.05, (expected, got)
