"""Session fixtures for serving: one tiny trained Llama, its Dataset, its 4-bit checkpoints, one vLLM.

The model (hidden 128, intermediate 256, 2 layers, 4 heads; every linear a multiple of 32) is trained
for a few dozen steps on generated text so that perplexity means something, then quantized with
GPTQ and RTN. The vLLM server is started once per session through ``llmfab serve run`` itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from llmfab.compress.quantize import QuantizeOptions, load_calibration, quantize_checkpoint

from .tiny_models import build_llama, build_tokenizer, sample_text, write_dataset

REPO = Path(__file__).resolve().parents[2]
SERVE_PYTHON = REPO / ".venv-serve" / "bin" / "python"


@dataclass
class TinySetup:
    root: Path  # LLMFAB_HOME
    tokenizer: Path
    bf16: Path
    dataset: Path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinySetup:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("llmfab-home")
    text = sample_text(1200)
    lines = text.splitlines()
    tok_dir = root / "tok"
    build_tokenizer(text, tok_dir)
    bf16 = build_llama(root / "models" / "tiny", tok_dir, train_text="\n".join(lines[:1000]), steps=30)
    ds = write_dataset(
        root / "datasets" / "tinyds", tok_dir, {"train": lines[:1000], "val": lines[1000:1100], "test": lines[1100:]}
    )
    return TinySetup(root=root, tokenizer=tok_dir, bf16=bf16, dataset=ds)


@pytest.fixture(scope="session")
def calibration(tiny: TinySetup) -> torch.Tensor:
    return load_calibration(tiny.dataset, 16, 128)


@pytest.fixture(scope="session")
def gptq_dir(tiny: TinySetup, calibration: torch.Tensor) -> Path:
    out = tiny.root / "q" / "gptq"
    quantize_checkpoint(tiny.bf16, out, QuantizeOptions(algorithm="gptq"), calibration)
    return out


@pytest.fixture(scope="session")
def rtn_dir(tiny: TinySetup) -> Path:
    out = tiny.root / "q" / "rtn"
    quantize_checkpoint(tiny.bf16, out, QuantizeOptions(algorithm="rtn"), None)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_service(path: Path, name: str, spec: dict) -> Path:
    spec = {"release": {"license": "apache-2.0"}, **spec}  # a model served by path names its licence
    doc = {"apiVersion": "llmfab.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": name}, "spec": spec}
    path.write_text(yaml.safe_dump(doc))
    return path


def serve_command(spec_file: Path) -> list[str]:
    """``llmfab serve run --spec`` through the workload entry (the CLI may not be wired yet)."""
    code = "import sys; from pathlib import Path; from llmfab.workload import run_stage; "
    code += f"sys.exit(run_stage('serve', Path({str(spec_file)!r})))"
    return [sys.executable, "-c", code]


@dataclass
class LiveServer:
    url: str
    name: str
    proc: subprocess.Popen[str]
    root: Path
    log: Path


def requires_serve_venv() -> None:
    if not SERVE_PYTHON.exists():
        pytest.skip(f"{SERVE_PYTHON} missing: run scripts/setup_serve_venv.sh to create the vLLM serving venv")


@contextmanager
def start_service(tiny: TinySetup, spec_dir: Path, name: str, spec: dict[str, Any],
                  env: dict[str, str] | None = None) -> Iterator[LiveServer]:  # fmt: skip
    """``llmfab serve run`` on ``spec`` until its status says ready (at most 600 s); stopped on exit."""
    requires_serve_venv()
    spec_file = write_service(spec_dir / f"{name}.yaml", name, spec)
    log = spec_dir / f"{name}.out"
    full_env = {**os.environ, "LLMFAB_HOME": str(tiny.root), "LLMFAB_SERVE_PYTHON": str(SERVE_PYTHON), **(env or {})}
    with log.open("w") as out:
        proc = subprocess.Popen(serve_command(spec_file), env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{spec['server']['port']}/v1"
    deadline = time.monotonic() + 600
    status_file = tiny.root / "services" / f"{name}.status.json"
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"llmfab serve run exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if status_file.exists() and '"readyReplicas": 1' in status_file.read_text():
                break
            time.sleep(1)
        else:
            pytest.fail(f"vLLM not ready in 600 s:\n{log.read_text()[-4000:]}")
        yield LiveServer(url=url, name=name, proc=proc, root=tiny.root, log=log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def vllm_server(tiny: TinySetup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real vLLM OpenAI server for the GPTQ model, started by ``llmfab serve run`` (once: ~30-90 s)."""
    spec = {
        "model": {"path": str(tiny.bf16)},
        "quantization": {"algorithm": "gptq", "calibrationDataset": "tinyds", "calibrationSamples": 16},
        "server": {"port": free_port(), "maxModelLen": 256, "maxNumSeqs": 8, "servedModelName": "tiny"},
    }
    with start_service(tiny, tmp_path_factory.mktemp("spec"), "tiny-svc", spec) as server:
        yield server


def logprob_gaps(url: str, served_name: str, model_dir: Path, reference: torch.nn.Module | None = None) -> list[float]:
    """|vLLM's prompt log-prob - transformers' (fp32)| for each token of a fixed sentence.

    ``reference``: the transformers model to compare with; default ``model_dir`` loaded by
    ``from_pretrained`` (which rejects asymmetric 4-bit checkpoints: pass ``load_dequantized``'s).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "The small cat reads a story near the river and the bright garden."
    body = {"model": served_name, "prompt": text, "max_tokens": 8, "prompt_logprobs": 0, "temperature": 0,
            "ignore_eos": True}
    request = urllib.request.Request(f"{url}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        answer = json.load(r)
    # The server generates too, not only scores the prompt: all the tokens asked for come back.
    assert answer["usage"]["completion_tokens"] == 8, answer["usage"]
    served = answer["choices"][0]["prompt_logprobs"][1:]  # the first token has no log-prob
    ids = AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]
    model = reference or AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    expected = [float(logp[i, t]) for i, t in enumerate(ids[1:])]
    got = [entry[str(t)]["logprob"] for entry, t in zip(served, ids[1:], strict=True)]
    return [abs(a - b) for a, b in zip(expected, got, strict=True)]
