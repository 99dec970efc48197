"""`llmfab up --detach` leaves the real vLLM server (or, scaled to zero, its wake proxy) running after it
returns; `llmfab down` stops it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from .conftest import TinySetup, free_port, requires_serve_venv, write_service

pytestmark = [pytest.mark.slow, pytest.mark.serve]


def llmfab(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmfab", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def up_detached(tiny: TinySetup, tmp_path: Path, name: str, **spec: Any) -> tuple[int, dict[str, str], str]:
    """``llmfab up --detach`` of one InferenceService of the tiny model: (port, env, stdout)."""
    port = free_port()
    spec = {"model": {"path": str(tiny.bf16)}, "quantization": {"method": "none"}, "eval": {"enabled": False},
            "server": {"port": port, "maxModelLen": 128}, **spec}  # fmt: skip
    pipeline = write_service(tmp_path / "svc.yaml", name, spec)
    env = {**os.environ, "LLMFAB_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    up = llmfab(env, "up", "-f", str(pipeline), "--detach", timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    return port, env, up.stdout


def test_up_detach_serves_until_down(tiny: TinySetup, tmp_path: Path) -> None:
    requires_serve_venv()
    port, env, stdout = up_detached(tiny, tmp_path, "detached")
    assert f"serving InferenceService/detached at http://127.0.0.1:{port}/v1" in stdout
    assert "curl http://127.0.0.1" in stdout and "llmfab down" in stdout

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=60) as answer:
        assert '"detached"' in answer.read().decode()

    down = llmfab(env, "down")
    assert down.returncode == 0 and "stopped detached" in down.stdout
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):  # the server is gone, not detached
        s.connect(("127.0.0.1", port))


def test_up_detach_returns_with_a_scaled_to_zero_service_asleep_and_down_stops_it(
    tiny: TinySetup, tmp_path: Path
) -> None:
    """``llmfab up`` waits for a service to accept requests: asleep, that is its wake proxy holding the port."""
    port, env, stdout = up_detached(tiny, tmp_path, "napper", autoscaling={"minReplicas": 0, "maxReplicas": 2})
    assert f"serving InferenceService/napper at http://127.0.0.1:{port}/v1 (scaled to zero" in stdout
    pid = json.loads((tmp_path / "home" / "services" / "detached.json").read_text())["napper"]
    assert psutil.Process(pid).children(recursive=True) == []  # no vLLM
    log = (tmp_path / "home" / "services" / "napper.log").read_text()
    assert "spec.autoscaling.maxReplicas: 2 has no effect here" in log
    get = llmfab(env, "get")
    assert "State=Idle" in get.stdout and "Ready=0" in get.stdout, get.stdout
    down = llmfab(env, "down")
    assert down.returncode == 0 and "stopped napper" in down.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
