"""HTTP at the byte level for the feedback app's tests: send exactly the bytes a test wants (a
malformed Content-Length, half a request line) and read one answer with a bound on every wait, so
that a hang fails the test instead of stalling it, and a dropped connection is told from an answer."""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass, field


@dataclass
class Reply:
    status: int | None  # None: the connection closed without an answer
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class Hang(AssertionError):
    """No answer and no close within the bound."""


def read_reply(sock: socket.socket, deadline: float, head_only: bool = False) -> Reply:
    """One response from ``sock``: its head, then Content-Length bytes (or up to the close); only
    the head for an answer to HEAD (``head_only``)."""
    start, data = time.monotonic(), b""

    def more() -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Hang(f"no complete answer within the bound; got {data[:200]!r}")
        sock.settimeout(left)
        try:
            return sock.recv(65536)
        except TimeoutError:
            raise Hang(f"no complete answer within the bound; got {data[:200]!r}") from None
        except ConnectionResetError:
            return b""

    while b"\r\n\r\n" not in data:
        chunk = more()
        if not chunk:
            if data:
                raise AssertionError(f"the connection closed in the middle of an answer: {data[:200]!r}")
            return Reply(None, seconds=time.monotonic() - start)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, code, *reason = status_line.split(" ", 2)
    assert version.startswith("HTTP/"), status_line  # aiohttp answers "POST /x" (no version) as HTTP/0.9
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = "0" if head_only else headers.get("content-length")
    while length is None or len(body) < int(length):
        chunk = more()
        if not chunk:
            if length is None:
                break
            raise AssertionError(f"the connection closed after {len(body)} of {length} body bytes")
        body += chunk
    return Reply(int(code), " ".join(reason), headers, body, time.monotonic() - start)


def exchange(port: int, data: bytes, timeout: float = 15.0, half_close: bool = False) -> Reply:
    """Send ``data`` to 127.0.0.1:``port`` and read one answer within ``timeout`` seconds (``half_close``:
    then shut the sending side, as a client that has nothing more to send)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the app may answer (413) and close before it has read all of a large body
        return read_reply(sock, deadline, head_only=data.startswith(b"HEAD "))


def wait_all_closed(socks: list[socket.socket], deadline: float) -> list[tuple[float, bytes]]:
    """For each socket, when (``time.monotonic()``) its peer closed it and what it sent before;
    :class:`Hang` if any is still open at ``deadline``."""
    got: dict[socket.socket, bytes] = {s: b"" for s in socks}
    closed: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks):
            left = deadline - time.monotonic()
            if left <= 0:
                raise Hang(
                    f"{len(socks) - len(closed)} of {len(socks)} connections still open at the deadline"
                )
            for key, _ in sel.select(timeout=left):
                sock = next(s for s in socks if s.fileno() == key.fd)
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    got[sock] += chunk
                else:
                    closed[sock] = time.monotonic()
                    sel.unregister(sock)
    return [(closed[s], got[s]) for s in socks]
