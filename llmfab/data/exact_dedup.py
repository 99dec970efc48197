"""Exact deduplication on a 128-bit hash of the normalised text; the first copy read is kept.

The key is computed in the workers (blake2b, in C); the set of seen keys lives in the driver,
which sees documents in input order, so which copy survives never depends on the worker count.
"""

from __future__ import annotations

import hashlib


def document_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class ExactDeduplicator:
    name = "exact_dedup"

    def __init__(self) -> None:
        self.first_seen: dict[bytes, int] = {}

    def check(self, key: bytes, index: int) -> int | None:
        """``None`` if ``key`` is new (recorded as document ``index``), else the first copy's index."""
        first = self.first_seen.setdefault(key, index)
        return None if first == index else first
