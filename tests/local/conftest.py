"""Processes a test starts end with the test, whatever its outcome, with everything they started.

A failed `llmfab up` test once left `llmfab up` and a 100,000-step training run busy for 26 minutes
after pytest ended. :class:`Processes` marks each process it starts with an environment variable,
which every descendant inherits (torchrun's workers included, in their own sessions), and its
finalizer SIGKILLs whatever still carries the mark. It also starts each one with SIGINT at its
default: a background job of a non-interactive shell inherits SIGINT as ignored, and a test must
check llmfab, not the shell that ran pytest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

MARK = "LLMFAB_TEST_PROCESS"
HOOKS = Path(__file__).parent / "hooks"  # sitecustomize.py: the slow points tests/local/test_signals.py uses


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[subprocess.Popen[Any], str] = {}  # process -> its mark

    def start(self, args: list[str], env: dict[str, str] | None = None, sigint: Any = signal.SIG_DFL,
              **popen: Any) -> subprocess.Popen[Any]:
        """Popen in a new session, SIGINT set to ``sigint`` (default: the default action) before exec."""
        mark = uuid.uuid4().hex
        proc = subprocess.Popen(args, env={**(env or os.environ), MARK: mark}, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, sigint), **popen)
        self.started[proc] = mark
        return proc

    def run(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 600,
            **popen: Any) -> subprocess.CompletedProcess[str]:
        """Like ``subprocess.run(..., capture_output=True, text=True)``: output goes through files,
        so a chatty child never blocks on a full pipe."""
        name = uuid.uuid4().hex[:8]
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = self.start(args, env, stdout=stdout, stderr=stderr, text=True, **popen)
            proc.wait(timeout=timeout)
        return subprocess.CompletedProcess(args, proc.returncode, out.read_text(), err.read_text())

    def survivors(self, proc: subprocess.Popen[Any]) -> list[psutil.Process]:
        """What is still running of ``proc`` and everything it started (zombies excluded)."""
        return _marked({self.started[proc]})

    def assert_none_left(self, proc: subprocess.Popen[Any], timeout: float = 10) -> None:
        psutil.wait_procs(self.survivors(proc), timeout=timeout)
        left = self.survivors(proc)
        assert not left, [" ".join(p.cmdline()) for p in left]

    def kill_all(self) -> None:
        for proc in self.started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        left = _marked(set(self.started.values()))
        for p in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(left, timeout=10)
        for proc in self.started:
            proc.wait()


def _marked(marks: set[str]) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get(MARK) in marks:
                found.append(p)
    return found


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.kill_all()


@pytest.fixture
def cpu_load(processes: Processes) -> None:
    """A busy loop on every core for the test's duration: stopping must not depend on spare CPU."""
    for _ in range(os.cpu_count() or 1):
        processes.start([sys.executable, "-c", "while True: pass"], stdout=subprocess.DEVNULL)
