"""Where the checks of ``scripts/gpu_check.py`` run: the :class:`Context` they share, the child
processes they start (each in its own session, so a time-out ends all it started; output to one log
per run) and the status, events and metrics files of llmfab's runs that they read. Standard library
only."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "scripts" / "gpu_check_worker.py"


class CheckFailed(Exception):
    """The check ran and what it proves did not hold (or it could not run); the message says why."""


class CheckSkipped(Exception):
    """The check does not apply here (e.g. NVML on a CPU rehearsal); the message says why."""


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    log: Path
    handle: IO[bytes]


@dataclass
class Context:
    """Where the checks run and what they share (the train check's run, the energy it measured)."""

    python: str  # the checks' interpreter: torch with CUDA plus llmfab's dependencies
    work: Path
    device: str  # "cuda", or "cpu" for a rehearsal of the script itself
    gpus: int
    deadline: float  # time.monotonic() by which everything must be done (--timeout)
    check_deadline: float = 0.0
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.work / "home"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        env.update(LLMFAB_HOME=str(self.home), TORCHINDUCTOR_CACHE_DIR=str(self.work / "inductor"),
                   PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false")
        return env

    def left(self) -> float:
        return max(0.0, min(self.check_deadline or self.deadline, self.deadline) - time.monotonic())

    def write_spec(self, resource: dict[str, Any]) -> Path:
        """A resource as a spec file (JSON is YAML; this process needs no YAML library)."""
        path = self.work / "specs" / f"{resource['metadata']['name']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(resource, indent=2) + "\n")
        return path

    def start(self, cmd: list[str], log_name: str, env: dict[str, str] | None = None) -> Child:
        log = self.work / "logs" / f"{log_name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = log.open("wb")
        handle.write(("$ " + " ".join(cmd) + "\n").encode())
        handle.flush()
        # Its own session and process group: a time-out ends everything it started.
        process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env={**self.env(), **(env or {})},
                                   cwd=REPO, start_new_session=True)
        return Child(process, log, handle)

    def finish(self, child: Child) -> int:
        try:
            return child.process.wait(timeout=self.left())
        except subprocess.TimeoutExpired:
            kill(child)
            raise CheckFailed(f"timed out; log: {child.log}") from None
        finally:
            child.handle.close()

    def run(self, cmd: list[str], log_name: str, env: dict[str, str] | None = None) -> Child:
        child = self.start(cmd, log_name, env)
        self.finish(child)
        return child

    def wait_until(self, condition: Callable[[], bool], child: Child, poll: float = 0.1) -> bool:
        """True once ``condition`` holds; False if ``child`` ended first; CheckFailed past the deadline."""
        while not condition():
            if child.process.poll() is not None:
                return bool(condition())
            if self.left() <= 0:
                kill(child)
                child.handle.close()
                raise CheckFailed(f"timed out; log: {child.log}")
            time.sleep(poll)
        return True

    def worker(self, args: list[str], log_name: str) -> dict[str, Any]:
        """Run ``gpu_check_worker.py ARGS`` and return the JSON object it printed last."""
        child = self.run([self.python, str(WORKER), *args], log_name)
        if child.process.returncode != 0:
            raise CheckFailed(f"worker {args[0]} exited {child.process.returncode}: {last_line(child.log)}; "
                              f"log: {child.log}")
        try:
            result: dict[str, Any] = json.loads(last_line(child.log))
        except json.JSONDecodeError:
            raise CheckFailed(f"worker {args[0]} printed no JSON; log: {child.log}") from None
        return result

    def llmfab(self) -> list[str]:
        return [self.python, "-m", "llmfab"]


def kill(child: Child) -> None:
    """SIGKILL the child's process group (it was started as its own session)."""
    try:
        os.killpg(child.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.process.wait()


def last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def event_numbers(events: list[dict[str, Any]], reason: str, pattern: str) -> list[int]:
    """The integer ``pattern`` captures in each message of the events with this reason, in order."""
    found = [re.search(pattern, str(e.get("message", ""))) for e in events if e.get("reason") == reason]
    return [int(m.group(1)) for m in found if m]
