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
A record's clock starts when its child is free to begin it. With ``workers`` children, each
record goes to the child with the fewest bytes waiting and the answers are put back in input
order. ``(item, None, text)`` is text already and passes through in its place.
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
from multiprocessing.connection import wait as connection_wait
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
    answer: tuple[str, str | None] | None = None  # (text, reason) once known


class _Child:
    """One child process and the records sent to it, oldest first."""

    def __init__(self, target: str, reason: str, options: list[str]) -> None:
        # a new interpreter, not fork (the reader's process may hold threads: Arrow, Ray) nor
        # multiprocessing's spawn (it re-imports the caller's __main__)
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, "-m", "llmfab.data.isolated", target, reason, *options],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.pipe_bytes = _enlarge_pipe(self.process.stdin.fileno())
        _enlarge_pipe(self.process.stdout.fileno())
        self.send = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.recv = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        self.sent: deque[_Pending] = deque()
        self.started = 0.0  # when the child became free to begin ``sent[0]``
        self.ready = False  # its first message (imports done) has come

    def unanswered(self) -> int:
        return sum(len(p.payload or b"") + PIPE_SLACK for p in self.sent)

    def close(self, kill: bool) -> None:
        self.send.close()
        self.recv.close()
        if not kill:
            try:
                self.process.wait(timeout=1)
                return
            except subprocess.TimeoutExpired:
                pass
        self.process.kill()
        self.process.wait()


class IsolatedConverter:
    """Convert records in ``workers`` child processes, in order, each within ``timeout`` seconds.

    ``target`` is ``"module:function"`` and ``options`` its string arguments (see the module
    docstring); ``reason`` is the prefix of the reasons it adds: ``<reason>_timeout`` for a record
    that took too long, ``<reason>_crashed`` for one whose child died, ``<reason>_error`` for one
    that raised. ``restarts`` counts children replaced. Use as a context manager (or call
    :meth:`close`) so the children end with the reader.
    """

    def __init__(self, target: str, options: list[str], timeout: float, reason: str = "extraction",
                 workers: int = 1, in_flight: int = IN_FLIGHT) -> None:
        self.target = target
        self.options = options
        self.timeout = timeout
        self.reason = reason
        self.workers = max(1, workers)
        self.in_flight = in_flight
        self.restarts = 0
        self._children: list[_Child | None] = [None] * self.workers

    def __enter__(self) -> IsolatedConverter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for i, child in enumerate(self._children):
            if child is not None:
                child.close(kill=False)
                self._children[i] = None

    def _child(self, i: int) -> _Child:
        child = self._children[i]
        if child is None:
            child = self._children[i] = _Child(self.target, self.reason, self.options)
        return child

    def _wait_ready(self, child: _Child) -> None:
        """The first message: the child has imported its libraries (not counted against a record)."""
        if not child.recv.poll(START_SECONDS):
            child.close(kill=True)
            raise RuntimeError(f"the conversion process ({self.target}) did not start within {START_SECONDS:.0f} s")
        try:
            child.recv.recv()
        except EOFError:
            code = child.process.wait()
            child.close(kill=True)
            raise RuntimeError(f"the conversion process ({self.target} {' '.join(self.options)}) exited at "
                               f"start (code {code}); is llmfab's data extra installed?") from None
        child.ready, child.started = True, time.monotonic()

    def _replace(self, i: int, lost: _Pending | None) -> None:
        """Kill child ``i`` and give the records it had not answered (but ``lost``) to a new one."""
        old = self._children[i]
        assert old is not None
        old.close(kill=True)
        self._children[i] = None
        self.restarts += 1
        resend = [p for p in old.sent if p is not lost]
        if resend:
            child = self._child(i)
            self._wait_ready(child)
            for p in resend:
                child.send.send((p.payload, p.arg))
                child.sent.append(p)

    def _dispatch(self, record: _Pending) -> bool:
        """Send ``record`` to the child with the fewest unanswered bytes that has room; False if none has.
        Room: never more unanswered bytes than its stdin pipe holds, or a send that blocks while the
        child blocks sending an answer would wait for ever."""
        best: tuple[int, int] | None = None
        for i in range(self.workers):
            child = self._children[i]
            if child is None:
                best = (0, i)
                break
            if len(child.sent) >= self.in_flight:
                continue
            load = child.unanswered()
            if load and load + len(record.payload or b"") + PIPE_SLACK > child.pipe_bytes:
                continue
            if best is None or load < best[0]:
                best = (load, i)
        if best is None:
            return False
        child = self._child(best[1])
        if not child.ready:
            self._wait_ready(child)
        if not child.sent:
            child.started = time.monotonic()
        child.send.send((record.payload, record.arg))
        child.sent.append(record)
        return True

    def _collect(self, wait: float) -> None:
        """Take the answers that are there (waiting up to ``wait`` s for one); kill children past a deadline."""
        busy = [c for c in self._children if c is not None and c.sent]
        if not busy:
            return
        now = time.monotonic()
        wait = min(wait, *(c.started + self.timeout - now for c in busy))
        ready = connection_wait([c.recv for c in busy], max(wait, 0))
        for i, child in enumerate(self._children):
            if child is None or not child.sent:
                continue
            if child.recv in ready:
                head = child.sent[0]
                try:
                    head.answer = child.recv.recv()
                except EOFError:  # the child died (out of memory): that record is lost, the rest go on
                    head.answer = ("", f"{self.reason}_crashed")
                    self._replace(i, head)
                    continue
                child.sent.popleft()
                child.started = time.monotonic()
            elif time.monotonic() >= child.started + self.timeout:
                head = child.sent[0]
                head.answer = ("", f"{self.reason}_timeout")
                self._replace(i, head)

    def convert(self, records: Iterable[tuple[Any, bytes | None, str | None]]
                ) -> Iterator[tuple[Any, str, str | None]]:
        """``(item, payload, arg)`` → ``(item, text, reason)`` in order; ``(item, None, text)`` is
        text already (a WET record) and passes through in its place. Children start as records come."""
        order: deque[_Pending] = deque()  # every record taken and not yet given back, in input order
        source = iter(records)
        waiting: _Pending | None = None  # taken from ``records``, not yet sent
        exhausted = False
        failed: BaseException | None = None  # raised by ``records``: raised again once those before it are out
        while True:
            while len(order) < self.in_flight * self.workers:
                if waiting is None and not exhausted:
                    try:
                        waiting = _Pending(*next(source))
                    except StopIteration:
                        exhausted = True
                    except Exception as e:  # a truncated file: the records read before it still count
                        exhausted, failed = True, e
                if waiting is None:
                    break
                if waiting.payload is None:
                    waiting.answer = (waiting.arg or "", None)
                elif not self._dispatch(waiting):
                    break
                order.append(waiting)
                waiting = None
            while order and order[0].answer is not None:
                done = order.popleft()
                assert done.answer is not None
                yield done.item, done.answer[0], done.answer[1]
            if not order:  # nothing taken and not given back: ``records`` is done (nothing waits to be sent)
                if failed is not None:
                    raise failed
                return
            self._collect(wait=START_SECONDS)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3:])
