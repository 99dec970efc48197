"""Reading untrusted files in bounded memory: decompress as a stream, cap each record.

A reader must never hold more of its input than one capped record, whatever the input: a gzip
bomb (a few MB that decompress to GiBs of one line), a JSON line of a billion digits or a file
read whole. Everything here works on a decompressed *byte* stream in fixed-size chunks and hands
back either a record of at most ``cap`` bytes or a :class:`TooLong` marker, having skipped the rest
of that record without buffering it, so the caller can fail naming the file and line or count the
record as too long and go on. Records are split at ``\\n`` (a ``\\r\\n`` stays at the end of its line).

Decompression is by suffix (gzip, zstd, bzip2, xz); :data:`DECOMPRESSION_ERRORS` are what a
corrupted or truncated compressed file raises, so a reader can name the file instead of a trace.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import zstandard

COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bzip2", ".xz": "xz"}
CHUNK_BYTES = 1 << 20
# what a corrupted/truncated stream raises: gzip (OSError/EOFError/zlib.error), bz2 (OSError/EOFError),
# xz (LZMAError), zstd (ZstdError)
DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error, lzma.LZMAError,
                                                     zstandard.ZstdError)


@dataclass(frozen=True, slots=True)
class TooLong:
    """A record longer than the cap, skipped: at least ``size`` bytes (the reader stopped counting there)."""

    size: int


def open_decompressed(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed as a stream when its last suffix names a compression."""
    return decompressed(open(path, "rb"), path.name)


def decompressed(raw: IO[bytes], name: str) -> IO[bytes]:
    """``raw`` decompressed as a stream when ``name``'s last suffix names a compression (closing the
    result closes ``raw``); ``raw`` itself otherwise."""
    kind = COMPRESSION_SUFFIXES.get(Path(name).suffix.lower())
    if kind == "gzip":
        return _closing_both(cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")), raw)
    if kind == "zstd":
        return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(raw, closefd=True,
                                                                           read_across_frames=True))
    if kind == "bzip2":
        return _closing_both(bz2.BZ2File(raw, "rb"), raw)
    if kind == "xz":
        return _closing_both(lzma.LZMAFile(raw, "rb"), raw)
    return raw


def _closing_both(outer: IO[bytes], raw: IO[bytes]) -> IO[bytes]:
    """gzip/bz2/lzma leave a file object they were given open: close it with them."""
    close = outer.close

    def close_both() -> None:
        try:
            close()
        finally:
            raw.close()

    outer.close = close_both  # type: ignore[method-assign]
    return outer


class Prefixed(io.RawIOBase):
    """``head`` (bytes already read from ``rest``) followed by the rest of ``rest``: a peek without seeking."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.head:
            n = min(len(view), len(self.head))
            view[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.rest.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.rest.close()
        super().close()


def peek(stream: IO[bytes], size: int) -> tuple[bytes, IO[bytes]]:
    """Up to ``size`` first bytes of ``stream`` and a stream that still starts with them."""
    head = b""
    while len(head) < size and (block := stream.read(size - len(head))):
        head += block
    return head, cast(IO[bytes], io.BufferedReader(Prefixed(head, stream), CHUNK_BYTES))


def read_capped(stream: IO[bytes], cap: int) -> bytes | TooLong:
    """All of ``stream`` if it is at most ``cap`` bytes; else :class:`TooLong`, having read ``cap + 1``."""
    data = stream.read(cap + 1)
    return TooLong(len(data)) if len(data) > cap else data


def capped_lines(stream: IO[bytes], cap: int, chunk: int = CHUNK_BYTES) -> Iterator[tuple[int, bytes | TooLong]]:
    """``(line number, line)`` for each line (its ``\\n`` kept), a line over ``cap`` bytes as :class:`TooLong`.

    Holds at most ``cap + chunk`` bytes: the start of a line is kept only while it is within the
    cap; past it, the rest of the line is only counted, chunk by chunk, up to its newline.
    """
    lineno = 1
    parts: list[bytes] = []  # the current line so far, while it is within the cap
    size = 0
    while block := stream.read(chunk):
        pieces = block.split(b"\n")
        for piece in pieces[:-1]:  # each ends a line
            size += len(piece) + 1
            if size > cap:
                yield lineno, TooLong(size)
            elif parts:
                parts += (piece, b"\n")
                yield lineno, b"".join(parts)
            else:
                yield lineno, piece + b"\n"
            lineno, parts, size = lineno + 1, [], 0
        size += len(pieces[-1])
        if size > cap:
            parts = []
        elif pieces[-1]:
            parts.append(pieces[-1])
    if size:
        yield lineno, TooLong(size) if size > cap else b"".join(parts)
