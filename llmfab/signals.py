"""How an llmfab process stops: SIGINT and SIGTERM become exceptions that the code already handles.

Every entrypoint (the CLI's ``up``, ``down`` and ``<stage> run``, and the torchrun worker
``llmfab.training.launch``) runs through :func:`main`, which installs one handler for both signals:

- SIGINT raises ``KeyboardInterrupt``, set explicitly: a background job of a non-interactive shell
  (``cmd &`` under ``bash -c``) inherits SIGINT as ignored, Python then installs no handler, and
  Ctrl-C or ``llmfab up`` stopping its child would do nothing.
- SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt``, so every cleanup written for Ctrl-C
  runs for it too. Kubernetes stops a pod with SIGTERM and SIGKILLs it after
  ``terminationGracePeriodSeconds`` (30 s by default); systemd and ``docker stop`` do the same.
- Only the first stop signal raises; repeats are ignored, so the status write and the cleanup that
  follow cannot be cut short. SIGKILL after a bounded grace is the escalation (``llmfab up`` and
  the kubelet both send it).
- Where stopping midway would leave a state that must not be saved (a training step, a checkpoint
  write), :func:`hold_sigterm` defers SIGTERM to a safe point, for a bounded time.

The exit code of a stopped process is ``128 + signal``: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C, reported as ``Terminated``, exit code 143."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_of(stop: KeyboardInterrupt) -> int:
    """The signal behind a stop: SIGTERM for :class:`Terminated`, SIGINT for a plain Ctrl-C."""
    return getattr(stop, "signum", signal.SIGINT)


def exit_code(signum: int) -> int:
    """A process stopped by ``signum`` exits ``128 + signum``, as a shell reports it: 130, 143."""
    return 128 + signum


def stopping() -> int | None:
    """The stop signal this process has raised, if any. A failure after it is the stop's doing,
    not a fault: a ``KeyboardInterrupt`` raised inside a callback of a C++ library (torch's
    checkpoint writer) can come out as a ``RuntimeError`` of a write it cut short."""
    return _state.signum


def stop_reason(signum: int) -> tuple[str, str]:
    """(status reason, message) for a resource stopped by ``signum``."""
    if signum == signal.SIGINT:
        return "Interrupted", "stopped by the user (SIGINT)"
    return "Terminated", (
        f"stopped by {signal.Signals(signum).name} (Kubernetes pod deletion or eviction, systemd, "
        "docker stop); run it again to continue"
    )


class SigtermHold:
    """SIGTERM deferred while this is the active hold (see :func:`hold_sigterm`)."""

    def __init__(self, limit: float, outer: SigtermHold | None) -> None:
        self.limit, self.outer = limit, outer
        self.arrived: float | None = None
        self._expired = False
        self._timer: threading.Timer | None = None

    def since(self) -> float | None:
        """Seconds since the held SIGTERM arrived; None if none did."""
        return None if self.arrived is None else time.monotonic() - self.arrived

    def stop(self) -> NoReturn:
        """Raise the held SIGTERM now (the caller reached its safe point)."""
        _state.signum = signal.SIGTERM  # first: a timer firing meanwhile is then ignored
        self.close()
        raise Terminated(signal.SIGTERM)

    def release(self) -> None:
        """Stop holding; a SIGTERM held until now raises here."""
        self.close()
        if self.arrived is not None:
            self.stop()

    def close(self) -> None:
        """Stop holding, raising nothing (for a ``finally``); a SIGTERM held until now is dropped."""
        if self._timer is not None:
            self._timer.cancel()
        if _state.hold is self:
            _state.hold = self.outer

    def _defer(self) -> bool:
        """Called by the handler: whether this SIGTERM waits for the safe point."""
        if self._expired:
            return False
        if self.arrived is None:
            self.arrived = time.monotonic()
            self._timer = threading.Timer(self.limit, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return True

    def _expire(self) -> None:
        self._expired = True
        # A real signal, to the main thread: it also ends a blocking call there (a sleep, a wait).
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)


class _State:
    signum: int | None = None  # the stop signal already raised, if any
    hold: SigtermHold | None = None


_state = _State()


def _handle(signum: int, _frame: FrameType | None) -> None:
    if _state.signum is not None:
        return  # already stopping: let that finish (SIGKILL is the escalation)
    if signum == signal.SIGTERM and _state.hold is not None and _state.hold._defer():
        return
    _state.signum = signum
    raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)


def install() -> None:
    """Handle SIGINT and SIGTERM as described above, whatever dispositions this process inherited."""
    _state.signum = None
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handle)


def main(work: Callable[[], int]) -> int:
    """Run an entrypoint's ``work`` with :func:`install`'s handlers; a stop that escapes it (e.g.
    before a workload had a status to report it in) still gives the signal's exit code."""
    install()
    try:
        return work()
    except KeyboardInterrupt as stop:
        return exit_code(signal_of(stop))


def hold_sigterm(limit: float) -> SigtermHold:
    """From now until ``release()``, ``stop()`` or ``close()``, SIGTERM does not raise: the code
    polls ``since()`` at its safe points and calls ``stop()`` there. A SIGTERM held for ``limit``
    seconds raises wherever the code is. SIGINT is never held."""
    _state.hold = SigtermHold(limit, _state.hold)
    return _state.hold


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child, before exec (or first thing after): deliver ``sig`` to it when its parent dies,
    even by SIGKILL, so it does not run on as an orphan (Linux prctl; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def stop_process_group(pgid: int, sig: int, grace: float, reap: Callable[[], object] = lambda: None) -> None:
    """Send ``sig`` to process group ``pgid`` and wait until no process of it is left; SIGKILL
    what remains after ``grace`` seconds (and wait up to 5 s more). Waiting for the whole group,
    not only its leader, is what frees the memory: vLLM's engine runs in a child process.
    ``reap`` collects the leader if it is the caller's child (an exited leader stays in its group
    as a zombie until then)."""
    for signum, wait in ((sig, grace), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait
        try:
            os.killpg(pgid, signum)
            while time.monotonic() < deadline:
                reap()
                os.killpg(pgid, 0)
                time.sleep(0.05)
        except ProcessLookupError:
            return
