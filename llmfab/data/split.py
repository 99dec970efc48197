"""Train/val/test assignment by document, deterministic from the split seed and the text hash.

A document's split depends only on (seed, its content key), never on order, worker count or
which other documents exist, so adding a source does not reshuffle the existing split; copies
repeated by a source weight land in the same split as their original. Dedup runs before this,
so near-duplicates cannot straddle train and test.
"""

from __future__ import annotations

import hashlib

from llmfab.api.dataset import Split


def split_of(key: bytes, spec: Split) -> str:
    digest = hashlib.blake2b(key, digest_size=8, key=spec.seed.to_bytes(8, "little", signed=True)).digest()
    u = int.from_bytes(digest, "little") / 2.0**64
    if u < spec.train:
        return "train"
    if u < spec.train + spec.val:
        return "val"
    return "test"
