"""The real vLLM OpenAI server on loopback, started by ``llmfab serve run`` (one per session).

Needs the serving venv (``scripts/setup_serve_venv.sh``); skipped with that reason otherwise.
vLLM takes ~30 s (idle machine) to a few minutes (busy one) and ~3.3 GiB to start.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from llmfab.serving.chat import chat_loop, stream_chat

from .conftest import (
    SERVE_PYTHON,
    LiveServer,
    TinySetup,
    free_port,
    logprob_gaps,
    requires_serve_venv,
    write_service,
)

pytestmark = [pytest.mark.slow, pytest.mark.serve]

METRICS = [
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:kv_cache_usage_perc",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:generation_tokens_total",
]


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        data: dict[str, Any] = json.load(r)
        return data


def test_status_reports_url_and_4bit_size(vllm_server: LiveServer) -> None:
    status = json.loads((vllm_server.root / "services" / f"{vllm_server.name}.status.json").read_text())
    assert status["url"] == vllm_server.url and status["readyReplicas"] == 1 and status["phase"] == "Running"
    model_dir = vllm_server.root / "services" / vllm_server.name / "model-4bit"
    assert status["quantizedPath"] == str(model_dir)
    assert status["modelSizeBytes"] == (model_dir / "model.safetensors").stat().st_size


def test_completion(vllm_server: LiveServer) -> None:
    out = post(f"{vllm_server.url}/completions", {"model": "tiny", "prompt": "The cat", "max_tokens": 12, "temperature": 0})
    assert out["usage"]["completion_tokens"] == 12
    assert out["choices"][0]["text"].strip()


def test_chat_completion_uses_the_chat_template(vllm_server: LiveServer) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8}
    out = post(f"{vllm_server.url}/chat/completions", body)
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["completion_tokens"] >= 1


def test_streaming_chat_and_the_chat_client(vllm_server: LiveServer) -> None:
    pieces = list(stream_chat(vllm_server.url, "tiny", [{"role": "user", "content": "Tell me"}], max_tokens=10))
    assert len(pieces) >= 2, "streaming should deliver the answer in several chunks"
    stdout = io.StringIO()
    code = chat_loop(vllm_server.name, root=vllm_server.root, stdin=io.StringIO("hello\n/quit\n"), stdout=stdout,
                     max_tokens=6)  # fmt: skip
    assert code == 0 and "chatting with tiny" in stdout.getvalue()


def test_streaming_completion_is_server_sent_events(vllm_server: LiveServer) -> None:
    body = {"model": "tiny", "prompt": "A dog", "max_tokens": 8, "stream": True}
    req = urllib.request.Request(f"{vllm_server.url}/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=120) as r:
        events = [line.decode().strip() for line in r if line.strip()]
    assert events[-1] == "data: [DONE]" and len(events) >= 3


def test_metrics_names(vllm_server: LiveServer) -> None:
    post(f"{vllm_server.url}/completions", {"model": "tiny", "prompt": "x", "max_tokens": 4})
    with urllib.request.urlopen(vllm_server.url.removesuffix("/v1") + "/metrics", timeout=30) as r:
        text = r.read().decode()
    missing = [m for m in METRICS if m not in text]
    assert not missing, missing


# --- bad inputs -------------------------------------------------------------------------------


def run_serve(tiny: TinySetup, tmp_path: Path, spec: dict[str, Any], env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
    from .conftest import serve_command

    f = write_service(tmp_path / "svc.yaml", "bad-svc", spec)
    full_env = {**os.environ, "LLMFAB_HOME": str(tiny.root), "LLMFAB_SERVE_PYTHON": str(SERVE_PYTHON), **(env or {})}
    return subprocess.run(serve_command(f), env=full_env, capture_output=True, text=True, timeout=timeout)


def test_missing_model_directory(tiny: TinySetup, tmp_path: Path) -> None:
    r = run_serve(tiny, tmp_path, {"model": {"path": str(tmp_path / "nowhere")}, "quantization": {"method": "none"}})
    assert r.returncode == 1
    assert "spec.model.path" in r.stderr and "does not exist" in r.stderr


def test_shape_the_4bit_kernel_cannot_take_fails_before_vllm(tiny: TinySetup, tmp_path: Path) -> None:
    from .tiny_models import build_llama

    bad = build_llama(tmp_path / "bad-model", tiny.tokenizer, hidden=96, intermediate=200, layers=1, heads=4)
    spec = {"model": {"path": str(bad)}, "quantization": {"algorithm": "rtn"}, "server": {"port": free_port()}}
    r = run_serve(tiny, tmp_path, spec, timeout=120)
    assert r.returncode == 1
    assert "mlp.gate_proj: out_features=200 is not a multiple of 32" in r.stderr
    assert "starting vLLM" not in r.stdout


def test_port_in_use(tiny: TinySetup, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        spec = {"model": {"path": str(tiny.bf16)}, "quantization": {"method": "none"}, "server": {"port": port}}
        r = run_serve(tiny, tmp_path, spec, timeout=120)
    assert r.returncode == 1
    assert f"spec.server.port: 127.0.0.1:{port} is already in use" in r.stderr
    assert "starting vLLM" not in r.stdout


def test_server_that_dies_during_startup_shows_its_log_tail(tiny: TinySetup, tmp_path: Path) -> None:
    """The real vLLM, given a flag it rejects, exits during start-up: non-zero, its own words shown."""
    requires_serve_venv()
    spec = {
        "model": {"path": str(tiny.bf16)},
        "quantization": {"method": "none"},
        "server": {"port": free_port(), "extraArgs": ["--no-such-flag-for-vllm"]},
    }
    r = run_serve(tiny, tmp_path, spec, timeout=300)
    assert r.returncode == 1
    assert "vLLM exited with code" in r.stderr and "during start-up" in r.stderr
    assert "--no-such-flag-for-vllm" in r.stderr.split("last lines:", 1)[1]


def test_sigterm_stops_the_server_and_the_workload(tiny: TinySetup, tmp_path: Path) -> None:
    """A fake server (a shell script as the serving python) proves the signal is forwarded."""
    fake = tmp_path / "fake-python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        "port=$(echo \"$@\" | sed -E 's/.*--port ([0-9]+).*/\\1/')\n"
        f"exec {sys.executable} -c \"import http.server,sys,signal\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers()\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('fake got SIGTERM', flush=True), sys.exit(0)))\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\" $port\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    port = free_port()
    f = write_service(tmp_path / "svc.yaml", "fake-svc",
                      {"model": {"path": str(tiny.bf16)}, "quantization": {"method": "none"}, "server": {"port": port}})  # fmt: skip
    from .conftest import serve_command

    env = {**os.environ, "LLMFAB_HOME": str(tiny.root), "LLMFAB_SERVE_PYTHON": str(fake), "LLMFAB_SERVE_DEVICE": "cpu"}
    proc = subprocess.Popen(serve_command(f), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status_file = tiny.root / "services" / "fake-svc.status.json"
    assert proc.stdout is not None
    for line in proc.stdout:
        if "ready at" in line:
            break
    status = json.loads(status_file.read_text())
    assert status["readyReplicas"] == 1 and status["url"] == f"http://127.0.0.1:{port}/v1"
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    assert "fake got SIGTERM" in rest and "server stopped (SIGTERM)" in rest
    assert json.loads(status_file.read_text())["readyReplicas"] == 0


def test_vllm_4bit_logprobs_match_transformers(vllm_server: LiveServer) -> None:
    """vLLM's 4-bit kernel (whichever ``LLMFAB_VLLM_INT4=auto`` picks here) computes what transformers computes."""
    diffs = logprob_gaps(vllm_server.url, "tiny", vllm_server.root / "services" / vllm_server.name / "model-4bit")
    assert max(diffs) < 0.15 and sum(diffs) / len(diffs) < 0.05, diffs
