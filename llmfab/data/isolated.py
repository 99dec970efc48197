"""Convert records in a child process, in order, each within a time bound.

A reader hands :class:`IsolatedConverter` ``(item, payload, arg)`` triples and gets ``(item, text,
reason)`` back in the same order. The work (HTML to text, wikitext to text) runs in a child
process, because no thread can stop C code that does not return (Resiliparse's main-content pass
is quadratic in a page's nesting depth); a record whose answer has not come back within the
timeout has its child killed (counted as ``<reason>_timeout``, e.g. ``extraction_timeout``) and a
new child takes the records after it. The child is a new interpreter, ``python -m
llmfab.data.isolated MODULE:FUNCTION OPTION...``; ``FUNCTION(*OPTIONS)`` returns the per-record
function ``(payload, arg) -> (text, reason)``.

Records are sent ahead while their bytes fit in the child's stdin pipe (enlarged to 1 MiB where
Linux allows), so parent and child rarely wait for each other (on a loaded machine each hand-over
waits for a time slice) and the reader's own work (parsing) overlaps the child's: two cores.
A record's clock starts when the child is free to begin it. ``(item, None, text)`` is text
already and passes through in its place without going to the child.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

IN_FLIGHT = 64  # records sent ahead to the child...
PIPE_BYTES = 1 << 20  # ... while their bytes fit in its stdin pipe (see convert), enlarged to this where allowed
PIPE_SLACK = 16 << 10  # message headers and pickling around each record
START_SECONDS = 60.0  # a child's first answer: it imports its libraries first


def _child(target: str, reason: str, options: list[str]) -> None:
    """The child's loop: ``(payload, arg)`` in on stdin, ``(text, reason)`` out on stdout, until EOF."""
    inbox = Connection(os.dup(0), writable=False)
    outbox = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # a stray print must not corrupt the answers
    module, function = target.split(":")
    task = getattr(importlib.import_module(module), function)(*options)
    outbox.send(None)
    while True:
        try:
            payload, arg = inbox.recv()
        except EOFError:
            return
        try:
            result = task(payload, arg)
        except Exception:  # a parser error on one record is that record's
            result = ("", f"{reason}_error")
        try:
            outbox.send(result)
        except OSError:  # the reader stopped (closed the pipe): nothing is waiting for the answer
            return


def _enlarge_pipe(fd: int) -> int:
    """The pipe's capacity, raised to :data:`PIPE_BYTES` where the system allows (Linux's F_SETPIPE_SZ;
    ``/proc/sys/fs/pipe-max-size`` is 1 MiB by default): more records in flight, fewer round trips."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        return int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
    except (ImportError, AttributeError, OSError):
        return 64 << 10


@dataclass
class _Pending:
    item: Any
    payload: bytes | None  # None: ``arg`` holds the text already
    arg: str | None


class IsolatedConverter:
    """Convert records in a child process, in order, each within ``timeout`` seconds.

    ``target`` is ``"module:function"`` and ``options`` its string arguments (see the module
    docstring); ``reason`` is the prefix of the reasons it adds: ``<reason>_timeout`` for a record
    that took too long, ``<reason>_crashed`` for one whose child died, ``<reason>_error`` for one
    that raised. ``restarts`` counts children replaced. Use as a context manager (or call
    :meth:`close`) so the child ends with the reader.
    """

    def __init__(self, target: str, options: list[str], timeout: float, reason: str = "extraction",
                 in_flight: int = IN_FLIGHT) -> None:
        self.target = target
        self.options = options
        self.timeout = timeout
        self.reason = reason
        self.in_flight = in_flight
        self.restarts = 0
        self.pipe_bytes = 64 << 10  # Linux's default pipe size, until a child's pipe says otherwise
        self._process: subprocess.Popen[bytes] | None = None
        self._send: Connection | None = None  # to the child's stdin
        self._conn: Connection | None = None  # from its stdout

    def __enter__(self) -> IsolatedConverter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> Connection:
        # a new interpreter, not fork (the reader's process may hold threads: Arrow, Ray) nor
        # multiprocessing's spawn (it re-imports the caller's __main__)
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen([sys.executable, "-m", "llmfab.data.isolated", self.target, self.reason,
                                    *self.options], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert process.stdin is not None and process.stdout is not None
        self.pipe_bytes = _enlarge_pipe(process.stdin.fileno())
        self._process = process
        self._send = Connection(os.dup(process.stdin.fileno()), readable=False)
        self._conn = Connection(os.dup(process.stdout.fileno()), writable=False)
        process.stdin.close()
        process.stdout.close()
        if not self._conn.poll(START_SECONDS):
            self._kill()
            raise RuntimeError(f"the conversion process ({self.target}) did not start within {START_SECONDS:.0f} s")
        try:
            self._conn.recv()
        except EOFError:
            self._kill()
            raise RuntimeError(f"the conversion process ({self.target} {' '.join(self.options)}) exited at "
                               f"start (code {process.wait()}); is llmfab's data extra installed?") from None
        return self._conn

    def close(self) -> None:
        for conn in (self._send, self._conn):
            if conn is not None:
                conn.close()
        self._send = self._conn = None
        if self._process is not None:
            try:
                self._process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        for conn in (self._send, self._conn):
            if conn is not None:
                conn.close()
        self._send = self._conn = None
        self.restarts += 1

    def convert(self, records: Iterable[tuple[Any, bytes | None, str | None]]
                ) -> Iterator[tuple[Any, str, str | None]]:
        """``(item, payload, arg)`` → ``(item, text, reason)`` in order; ``(item, None, text)`` is
        text already (a WET record) and passes through in its place. The child starts at the first record."""
        pending: deque[_Pending] = deque()  # in order; those with a payload were sent to the child
        source = iter(records)
        waiting: _Pending | None = None  # taken from ``records``, not yet sent
        exhausted = False
        failed: BaseException | None = None  # raised by ``records``: raised again once those before it are out
        started = 0.0  # when the child became free to begin the oldest record sent
        while True:
            while len(pending) < self.in_flight:
                if waiting is None and not exhausted:
                    try:
                        waiting = _Pending(*next(source))
                    except StopIteration:
                        exhausted = True
                    except Exception as e:  # a truncated file: the records read before it still count
                        exhausted, failed = True, e
                if waiting is None:
                    break
                if waiting.payload is not None:
                    # never more unanswered bytes than the pipe holds: a send that blocks while the
                    # child blocks sending an answer would wait for ever
                    unanswered = sum(len(p.payload) + PIPE_SLACK for p in pending if p.payload is not None)
                    if unanswered and unanswered + len(waiting.payload) + PIPE_SLACK > self.pipe_bytes:
                        break
                    if self._send is None:
                        self._start()
                    if not unanswered:
                        started = time.monotonic()
                    assert self._send is not None
                    self._send.send((waiting.payload, waiting.arg))
                pending.append(waiting)
                waiting = None
            if not pending:
                if failed is not None:
                    raise failed
                return
            if pending[0].payload is None:
                done = pending.popleft()
                yield done.item, done.arg or "", None
                continue
            assert self._conn is not None
            if self._conn.poll(max(started + self.timeout - time.monotonic(), 0)):
                try:
                    text, reason = self._conn.recv()
                except EOFError:  # the child died (out of memory): that record is lost, the rest go on
                    text, reason = "", f"{self.reason}_crashed"
                    self._kill()
                    self._resend(pending, skip_first=True)
                done = pending.popleft()
                started = time.monotonic()
                yield done.item, text, reason
                continue
            done = pending.popleft()
            self._kill()
            self._resend(pending, skip_first=False)
            started = time.monotonic()
            yield done.item, "", f"{self.reason}_timeout"

    def _resend(self, pending: deque[_Pending], skip_first: bool) -> None:
        """A new child, sent the records the dead one had not answered (bar the first, if it is lost)."""
        resend = [p for p in list(pending)[1 if skip_first else 0:] if p.payload is not None]
        if not resend:
            return  # the next record starts a child
        self._start()
        assert self._send is not None
        for p in resend:
            self._send.send((p.payload, p.arg))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3:])
