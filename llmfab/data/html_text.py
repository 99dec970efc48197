"""HTML pages to text, each page within a time bound: charset, then Resiliparse's main-content text.

:func:`page_text` is the pure part: bytes of an HTTP payload and the charset its headers name →
``(text, None)`` or ``("", reason)``. The charset is the HTTP header's if Python knows it, else
the page's ``<meta charset>``, else uchardet's guess (Resiliparse's ``detect_encoding``); bytes
that do not decode strictly in it are tried as UTF-8 and then Windows-1252 (the WHATWG fallback
for Latin text), and a page that decodes in none of them is ``bad_charset``. The text is
Resiliparse's ``extract_plain_text`` with ``main_content=True``, as DCLM extracts Common Crawl, or
trafilatura's ``extract`` with ``favor_precision`` as datatrove calls it (``html.extractor``).

:class:`PageExtractor` runs :func:`page_text` in a child process, because no thread can stop C
code that does not return: Resiliparse's main-content pass is quadratic in a page's nesting depth
(10,000 nested ``div`` s, 110 KB of HTML, take ~7 s; 100,000 take over ten minutes). A page whose
result has not come back within the timeout has its child killed (``extraction_timeout``) and
a new child takes the pages after it. Pages are sent ahead while they fit in the child's stdin pipe
(enlarged to 1 MiB), so parent and child rarely wait for each other (on a loaded machine each
hand-over waits for a time slice); each page's clock starts when the child is free to begin it.
"""

from __future__ import annotations

import codecs
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

IN_FLIGHT = 64  # pages sent ahead to the child...
PIPE_BYTES = 1 << 20  # ... while their bytes fit in its stdin pipe (see extract), enlarged to this where allowed
PIPE_SLACK = 16 << 10  # message headers and pickling around each page
FALLBACK_ENCODINGS = ("utf-8", "cp1252")
START_SECONDS = 60.0  # a child's first answer: it imports Resiliparse first


def _codec(name: str | None) -> str | None:
    """Python's name for a charset label, None if Python has no such codec."""
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except (LookupError, ValueError):
        return None


def decode_page(payload: bytes, charset: str | None) -> tuple[str, str] | None:
    """``(text, encoding used)``, or None when no candidate encoding decodes the bytes strictly."""
    from resiliparse.parse.encoding import detect_encoding

    first = _codec(charset) or _codec(detect_encoding(payload, from_html_meta=True))
    tried = [first] if first else []
    for candidate in (*tried, *FALLBACK_ENCODINGS):
        try:
            text = payload.decode(candidate)
        except (UnicodeDecodeError, LookupError):
            continue
        return text.removeprefix("\ufeff"), candidate
    return None


def page_text(payload: bytes, charset: str | None, main_content: bool = True,
              extractor: str = "resiliparse") -> tuple[str, str | None]:
    """An HTML page's text: ``(text, None)``, or ``("", reason)`` (``bad_charset``, ``empty_text``)."""
    decoded = decode_page(payload, charset)
    if decoded is None:
        return "", "bad_charset"
    if extractor == "trafilatura":
        # datatrove's settings but deduplicate=False: trafilatura's duplicate cache lives in the
        # process, so a restarted child would give other text
        import trafilatura

        text = (trafilatura.extract(decoded[0], favor_precision=main_content, favor_recall=not main_content,
                                    include_comments=False, deduplicate=False) or "").strip()
    else:
        from resiliparse.extract.html2text import extract_plain_text

        text = extract_plain_text(decoded[0], main_content=main_content, alt_texts=False).strip()
    return (text, None) if text else ("", "empty_text")


def _child(main_content: bool, extractor: str) -> None:
    """The child's loop: ``(payload, charset)`` in on stdin, ``(text, reason)`` out on stdout, until EOF."""
    inbox = Connection(os.dup(0), writable=False)
    outbox = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # a stray print must not corrupt the answers
    page_text(b"<p>warm</p>", "utf-8", main_content, extractor)  # import and first use before the first deadline
    outbox.send(None)
    while True:
        try:
            payload, charset = inbox.recv()
        except EOFError:
            return
        try:
            result = page_text(payload, charset, main_content, extractor)
        except Exception:  # a parser error on one page is that page's
            result = ("", "extraction_error")
        try:
            outbox.send(result)
        except OSError:  # the reader stopped (closed the pipe): nothing is waiting for the answer
            return


def _enlarge_pipe(fd: int) -> int:
    """The pipe's capacity, raised to :data:`PIPE_BYTES` where the system allows (Linux's F_SETPIPE_SZ;
    ``/proc/sys/fs/pipe-max-size`` is 1 MiB by default): more pages in flight, fewer round trips."""
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        return int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
    except (ImportError, AttributeError, OSError):
        return 64 << 10


@dataclass
class _Pending:
    item: Any
    payload: bytes | None  # None: ``charset`` holds the text already
    charset: str | None


class PageExtractor:
    """Extract pages in a child process, in order, each within ``timeout`` seconds.

    ``extract(pages)`` takes ``(item, payload, charset)`` triples and yields ``(item, text,
    reason)`` in the same order; ``restarts`` counts children replaced (killed at a page's timeout, or
    dead).
    Use as a context manager (or call :meth:`close`) so the child ends with the reader.
    """

    def __init__(self, timeout: float, main_content: bool = True, in_flight: int = IN_FLIGHT,
                 extractor: str = "resiliparse") -> None:
        self.timeout = timeout
        self.main_content = main_content
        self.extractor = extractor
        self.in_flight = in_flight
        self.restarts = 0
        self.pipe_bytes = 64 << 10  # Linux's default pipe size, until a child's pipe says otherwise
        self._process: subprocess.Popen[bytes] | None = None
        self._send: Connection | None = None  # to the child's stdin
        self._conn: Connection | None = None  # from its stdout

    def __enter__(self) -> PageExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> Connection:
        # a new interpreter, not fork (the reader's process may hold threads: Arrow, Ray) nor
        # multiprocessing's spawn (it re-imports the caller's __main__)
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen([sys.executable, "-m", "llmfab.data.html_text", str(int(self.main_content)),
                                    self.extractor],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert process.stdin is not None and process.stdout is not None
        self.pipe_bytes = _enlarge_pipe(process.stdin.fileno())
        self._process = process
        self._send = Connection(os.dup(process.stdin.fileno()), readable=False)
        self._conn = Connection(os.dup(process.stdout.fileno()), writable=False)
        process.stdin.close()
        process.stdout.close()
        if not self._conn.poll(START_SECONDS):
            self._kill()
            raise RuntimeError(f"the HTML extraction process did not start within {START_SECONDS:.0f} s")
        try:
            self._conn.recv()
        except EOFError:
            self._kill()
            raise RuntimeError(f"the HTML extraction process exited at start (code {process.wait()}); "
                               f"is llmfab's data extra ({self.extractor}) installed?") from None
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

    def extract(self, pages: Iterable[tuple[Any, bytes | None, str | None]]
                ) -> Iterator[tuple[Any, str, str | None]]:
        """``(item, payload, charset)`` → ``(item, text, reason)`` in order; ``(item, None, text)`` is
        text already (a WET record) and passes through in its place. The child starts at the first page."""
        pending: deque[_Pending] = deque()  # in order; those with a payload were sent to the child
        source = iter(pages)
        waiting: _Pending | None = None  # taken from ``pages``, not yet sent
        exhausted = False
        failed: BaseException | None = None  # raised by ``pages``: raised again once the pages before it are out
        started = 0.0  # when the child became free to begin the oldest page sent
        while True:
            while len(pending) < self.in_flight:
                if waiting is None and not exhausted:
                    try:
                        waiting = _Pending(*next(source))
                    except StopIteration:
                        exhausted = True
                    except Exception as e:  # a truncated file: the pages read before it still count
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
                    self._send.send((waiting.payload, waiting.charset))
                pending.append(waiting)
                waiting = None
            if not pending:
                if failed is not None:
                    raise failed
                return
            if pending[0].payload is None:
                done = pending.popleft()
                yield done.item, done.charset or "", None
                continue
            assert self._conn is not None
            if self._conn.poll(max(started + self.timeout - time.monotonic(), 0)):
                try:
                    text, reason = self._conn.recv()
                except EOFError:  # the child died (out of memory): that page is lost, the rest go on
                    text, reason = "", "extraction_crashed"
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
            yield done.item, "", "extraction_timeout"

    def _resend(self, pending: deque[_Pending], skip_first: bool) -> None:
        """A new child, sent the pages the dead one had not answered (bar the first, if it is lost)."""
        resend = [p for p in list(pending)[1 if skip_first else 0:] if p.payload is not None]
        if not resend:
            return  # the next page starts a child
        self._start()
        assert self._send is not None
        for p in resend:
            self._send.send((p.payload, p.charset))


if __name__ == "__main__":
    _child(sys.argv[1] == "1", sys.argv[2])
