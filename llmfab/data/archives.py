"""Tar archives read as a stream, member by member, members that are compressed or archives too.

OpenWebText ships as ``openwebtext.tar.xz`` holding ``urlsf_subsetNN-M_data.xz`` files, each an
xz-compressed tar of ``.txt`` documents. :func:`tar_members` reads any such nesting without
unpacking it to disk and without seeking: the outer stream is decompressed as it is read
(gzip, bzip2, xz, zstd by suffix), each regular member is handed out as a stream (decompressed
by its own suffix) that must be read before the next, and a member whose name, once its
compression suffix is gone, says nothing is looked into: a tar header (``ustar`` at byte 257)
makes it an archive in turn, up to :data:`MAX_DEPTH` levels. What a member *is* (text, JSON
Lines, WARC, a MediaWiki dump) the caller decides from its name.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import IO

from llmfab.data.bounded_reading import COMPRESSION_SUFFIXES, decompressed, peek

TAR_SUFFIXES = {".tar", ".tgz", ".tbz", ".tbz2", ".txz", ".tzst"}
TAR_MAGIC_OFFSET = 257
MAX_DEPTH = 4


def is_archive(name: str) -> bool:
    """``x.tar``, ``x.tar.gz``, ``x.tgz``, ...: a tar archive by its name."""
    suffixes = [s.lower() for s in PurePosixPath(name).suffixes]
    return bool(suffixes) and (suffixes[-1] in TAR_SUFFIXES or (len(suffixes) > 1 and suffixes[-2] == ".tar"
                                                               and suffixes[-1] in COMPRESSION_SUFFIXES))


def _tar_decompressed(raw: IO[bytes], name: str) -> IO[bytes]:
    """``.tgz`` and friends name their compression in one suffix."""
    short = {".tgz": ".gz", ".tbz": ".bz2", ".tbz2": ".bz2", ".txz": ".xz", ".tzst": ".zst"}
    suffix = PurePosixPath(name).suffix.lower()
    return decompressed(raw, name + short[suffix] if suffix in short else name)


def looks_like_tar(head: bytes) -> bool:
    return head[TAR_MAGIC_OFFSET: TAR_MAGIC_OFFSET + 5] == b"ustar"


def strip_compression(name: str) -> str:
    """``a.txt.gz`` → ``a.txt``; ``a.txt`` unchanged."""
    path = PurePosixPath(name)
    return name[: -len(path.suffix)] if path.suffix.lower() in COMPRESSION_SUFFIXES else name


def tar_members(raw: IO[bytes], name: str) -> Iterator[tuple[str, IO[bytes]]]:
    """``(path, stream)`` of every regular file in the archive file ``raw`` named ``name``, nested
    archives opened in place; a path joins archive and member names with ``!``. Each stream is
    valid until the next is asked for."""
    stream = _tar_decompressed(raw, name)
    try:
        yield from _members(stream, name, 0)
    finally:
        stream.close()


def _members(stream: IO[bytes], label: str, depth: int) -> Iterator[tuple[str, IO[bytes]]]:
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        while (member := tar.next()) is not None:
            tar.members.clear()  # a stream-mode TarFile keeps every header it read: millions, for a big archive
            if not member.isfile():
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            path = f"{label}!{member.name}"
            inner = decompressed(handle, member.name)
            plain = strip_compression(member.name)
            nested: IO[bytes] | None = None
            if is_archive(plain):
                nested = _tar_decompressed(inner, plain)
            elif not PurePosixPath(plain).suffix:  # OpenWebText's subsets: "urlsf_subset00-1_data.xz"
                head, inner = peek(inner, 512)
                nested = inner if looks_like_tar(head) else None
            if nested is not None:
                if depth + 1 >= MAX_DEPTH:
                    raise tarfile.TarError(f"{path}: archives nested more than {MAX_DEPTH} deep")
                yield from _members(nested, path, depth + 1)
                continue
            yield path, inner
