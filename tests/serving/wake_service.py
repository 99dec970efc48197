"""A service with ``spec.autoscaling.minReplicas: 0`` run by ``llmfab serve run`` (the real vLLM
behind the wake proxy), and what its tests ask of it: status, vLLM's processes, bounded waits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from llmfab.stages import stage_command

from .conftest import SERVE_PYTHON, TinySetup, free_port, requires_serve_venv, write_service

COLD_START_BOUND = 600  # seconds: a busy 2-core machine has taken minutes
MAX_NUM_SEQS = 16


@dataclass
class Service:
    name: str
    url: str  # the OpenAI base URL (the proxy's)
    proc: subprocess.Popen[bytes]
    root: Path
    log: Path
    feedback: str | None = None

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.root / "services" / f"{self.name}.status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data

    def state(self) -> str | None:
        return (self.status().get("scale") or {}).get("state")

    def vllm(self) -> list[psutil.Process]:
        """vLLM's processes: the only children of the workload (the proxy and feedback app are threads)."""
        return psutil.Process(self.proc.pid).children(recursive=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def wait_until(condition: Callable[[], object], what: str, service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if service.proc.poll() is not None:
            pytest.fail(f"llmfab serve run exited with {service.proc.returncode} while waiting for {what}:\n"
                        f"{service.output()}")  # fmt: skip
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}; status {service.status()}\n{service.output()}")
        time.sleep(0.1)


def gone(processes: list[psutil.Process]) -> bool:
    def dead(p: psutil.Process) -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    return all(dead(p) for p in processes)


def start_service(tiny: TinySetup, work: Path, name: str, autoscaling: dict[str, Any],
                  feedback: bool = False) -> Service:  # fmt: skip
    requires_serve_venv()
    port, feedback_port = free_port(), free_port()
    spec: dict[str, Any] = {
        "model": {"path": str(tiny.bf16)}, "quantization": {"method": "none"},
        "server": {"port": port, "maxModelLen": 256, "maxNumSeqs": MAX_NUM_SEQS, "servedModelName": "tiny"},
        "autoscaling": {"minReplicas": 0, **autoscaling},
    }  # fmt: skip
    if feedback:
        spec["feedback"] = {"enabled": True, "port": feedback_port, "maxTokens": 8}
    spec_file = write_service(work / f"{name}.yaml", name, spec)
    env = {**os.environ, "LLMFAB_HOME": str(tiny.root), "LLMFAB_SERVE_PYTHON": str(SERVE_PYTHON)}
    for variable in ("LLMFAB_STATUS", "LLMFAB_FEEDBACK_TOKEN"):
        env.pop(variable, None)
    log = work / f"{name}.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(stage_command("serve", spec_file, python=sys.executable), env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    service = Service(name, f"http://127.0.0.1:{port}/v1", proc, tiny.root, log,
                      f"http://127.0.0.1:{feedback_port}" if feedback else None)  # fmt: skip
    try:
        wait_until(lambda: service.state() == "Idle" and service.status().get("url") == service.url,
                   "the proxy to hold the port", service, timeout=180)  # fmt: skip
    except BaseException:
        stop(service)
        raise
    return service


def stop(service: Service, sig: int = signal.SIGTERM) -> int:
    if service.proc.poll() is None:
        service.proc.send_signal(sig)
    try:
        return service.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        pytest.fail(f"llmfab serve run did not stop within 90 s of {signal.Signals(sig).name}")


def call(url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
         timeout: float = COLD_START_BOUND) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """(status, headers, body) of a request; JSON ``body`` makes it a POST."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def metric_value(base: str, name: str) -> float:
    """The sum of a metric's series on ``base``/metrics (NaN when it has none)."""
    text = call(f"{base}/metrics", timeout=30)[2].decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")]
    return sum(values) if values else float("nan")


def metric(service: Service, name: str) -> float:
    return metric_value(service.url.removesuffix("/v1"), name)
