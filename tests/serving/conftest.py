"""Session fixtures for serving: one tiny trained Llama, its Dataset, its 4-bit checkpoints, one vLLM.

The model (hidden 128, intermediate 256, 2 layers, 4 heads; every linear a multiple of 32) is trained
for a few dozen steps on generated text so that perplexity means something, then quantized with
GPTQ and RTN. The vLLM server is started once per session through ``llmfab serve run`` itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


@pytest.fixture(scope="session")
def vllm_server(tiny: TinySetup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real vLLM OpenAI server for the GPTQ model, started by ``llmfab serve run`` (once: ~30-90 s)."""
    requires_serve_venv()
    port = free_port()
    spec_dir = tmp_path_factory.mktemp("spec")
    spec = {
        "model": {"path": str(tiny.bf16)},
        "quantization": {"algorithm": "gptq", "calibrationDataset": "tinyds", "calibrationSamples": 16},
        "server": {"port": port, "maxModelLen": 256, "maxNumSeqs": 8, "servedModelName": "tiny"},
    }
    spec_file = write_service(spec_dir / "svc.yaml", "tiny-svc", spec)
    log = spec_dir / "serve.out"
    env = {**os.environ, "LLMFAB_HOME": str(tiny.root), "LLMFAB_SERVE_PYTHON": str(SERVE_PYTHON)}
    with log.open("w") as out:
        proc = subprocess.Popen(serve_command(spec_file), env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    status_file = tiny.root / "services" / "tiny-svc.status.json"
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"llmfab serve run exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if status_file.exists() and '"readyReplicas": 1' in status_file.read_text():
                break
            time.sleep(1)
        else:
            pytest.fail(f"vLLM not ready in 600 s:\n{log.read_text()[-4000:]}")
        yield LiveServer(url=url, name="tiny-svc", proc=proc, root=tiny.root, log=log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
