"""`llmfab up --detach` leaves the real vLLM server running after it returns; `llmfab down` stops it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .conftest import TinySetup, free_port, requires_serve_venv, write_service

pytestmark = [pytest.mark.slow, pytest.mark.serve]


def test_up_detach_serves_until_down(tiny: TinySetup, tmp_path: Path) -> None:
    requires_serve_venv()
    port = free_port()
    spec = {"model": {"path": str(tiny.bf16)}, "quantization": {"method": "none"}, "eval": {"enabled": False},
            "server": {"port": port, "maxModelLen": 128}}  # fmt: skip
    pipeline = write_service(tmp_path / "svc.yaml", "detached", spec)
    env = {**os.environ, "LLMFAB_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    up = subprocess.run([sys.executable, "-m", "llmfab", "up", "-f", str(pipeline), "--detach"], env=env,
                        capture_output=True, text=True, timeout=900)  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"serving InferenceService/detached at http://127.0.0.1:{port}/v1" in up.stdout
    assert "curl http://127.0.0.1" in up.stdout and "llmfab down" in up.stdout

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=60) as answer:
        assert '"detached"' in answer.read().decode()

    down = subprocess.run([sys.executable, "-m", "llmfab", "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "stopped detached" in down.stdout
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):  # the server is gone, not detached
        s.connect(("127.0.0.1", port))
