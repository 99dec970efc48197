"""Near-duplicate removal: MinHash signatures, LSH banding, then an exact Jaccard check.

Why not LSH alone: at the usual 0.8 threshold datasketch's optimal banding catches only ~55-60 % of
pairs whose true Jaccard is 0.8-0.9 (its S-curve is centred on the threshold). Here the banding is
chosen so a pair *at* the threshold becomes a candidate with probability >= 0.999 (more, shorter
bands: 25 × 5 for 128 permutations at 0.8), which lets many dissimilar pairs through too; every
candidate pair is then checked against the exact Jaccard of its shingle sets (kept in a spill
file, not in RAM), so nothing below the threshold is ever removed. One document of each
cluster (the first read) is kept; clusters are the connected components of verified pairs.

Signatures are computed per batch in numpy (see :mod:`llmfab.data.hashing`): a universal
multiply-add hash family per permutation, the minimum taken with ``minimum.reduceat``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from llmfab.api.dataset import NearDedup
from llmfab.data.hashing import mix64, shingle_hashes

CANDIDATE_RECALL_AT_THRESHOLD = 0.999
_CHUNK = 1 << 17


def lsh_params(threshold: float, permutations: int) -> tuple[int, int]:
    """(bands, rows): the longest rows whose banding still makes a pair at ``threshold`` a
    candidate with probability >= 0.999; longer rows mean fewer false candidates to verify."""
    best = (permutations, 1)
    for rows in range(1, permutations + 1):
        bands = permutations // rows
        if bands < 1:
            break
        p = 1.0 - (1.0 - threshold**rows) ** bands
        if p >= CANDIDATE_RECALL_AT_THRESHOLD:
            best = (bands, rows)
    return best


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    return 1.0 - (1.0 - jaccard**rows) ** bands


class MinHasher:
    """MinHash signatures and LSH band keys for batches of documents."""

    def __init__(self, spec: NearDedup) -> None:
        self.spec = spec
        if spec.bands is not None and spec.rows is not None:
            self.bands, self.rows = spec.bands, spec.rows
        else:
            self.bands, self.rows = lsh_params(spec.threshold, spec.permutations)
        rng = np.random.default_rng(spec.seed)
        self.a = rng.integers(1, 2**63, size=spec.permutations, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=spec.permutations, dtype=np.uint64)
        self.row_coeff = mix64(np.arange(1, self.rows + 1, dtype=np.uint64)) | np.uint64(1)

    def signatures(self, shingles: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """uint32 [documents, permutations]; documents without shingles get all-max rows.

        One permutation at a time over a chunk of shingles that fits in cache: ~10× faster than
        broadcasting a [shingles, permutations] matrix, and the memory stays small.
        """
        n_docs = len(offsets) - 1
        sig = np.full((n_docs, len(self.a)), np.iinfo(np.uint32).max, dtype=np.uint32)
        nonempty = np.flatnonzero(np.diff(offsets) > 0)
        h = np.empty(0, dtype=np.uint64)
        d = 0
        while d < len(nonempty):
            start_doc = nonempty[d]  # a chunk of whole documents, about _CHUNK shingles
            end = int(np.searchsorted(offsets[nonempty + 1], offsets[start_doc] + _CHUNK, side="right"))
            end = max(end, d + 1)
            docs = nonempty[d:end]
            lo, hi = offsets[docs[0]], offsets[docs[-1] + 1]
            chunk = shingles[lo:hi]
            starts = offsets[docs] - lo
            if len(h) < len(chunk):
                h = np.empty(len(chunk), dtype=np.uint64)
            buf = h[: len(chunk)]
            with np.errstate(over="ignore"):
                for p in range(len(self.a)):
                    np.multiply(chunk, self.a[p], out=buf)
                    buf += self.b[p]
                    # the high 32 bits are the hash; min commutes with the shift
                    sig[docs, p] = np.minimum.reduceat(buf, starts) >> np.uint64(32)
            d = end
        return sig

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """uint64 [documents, bands]: equal keys in a band make two documents candidates."""
        n = sig.shape[0]
        used = sig[:, : self.bands * self.rows].astype(np.uint64).reshape(n, self.bands, self.rows)
        with np.errstate(over="ignore"):
            acc = (used * self.row_coeff[None, None, :]).sum(axis=2, dtype=np.uint64)
            acc += np.arange(self.bands, dtype=np.uint64)[None, :] * np.uint64(0x9E3779B97F4A7C15)
        return mix64(acc)

    def sketch(self, texts: pa.Array | list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(band keys [n, bands], shingle hashes flat, their int64 offsets) of a batch.

        The shingles are not made distinct here (the minimum does not care); the exact Jaccard
        check does that for the few candidate pairs.
        """
        sh, off = shingle_hashes(texts, self.spec.shingle_size)
        return self.band_keys(self.signatures(sh, off)), sh, off


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of the sets of two uint64 arrays."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    a, b = np.unique(a), np.unique(b)
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


class NearDuplicateIndex:
    """Collects band keys (RAM) and shingle sets (a spill file) in document order; finds clusters."""

    def __init__(self, spec: NearDedup, spill: Path, bands: int,
                 restored: tuple[list[np.ndarray], np.ndarray] | None = None) -> None:
        """``restored``: the band keys and shingle counts of documents already added by a build
        that resumes; the spill file keeps their shingles and loses anything written after them."""
        self.spec = spec
        self.spill_path = spill
        self.keys: list[np.ndarray] = []
        self.offsets: list[int] = [0]
        self.bands = bands
        if restored is not None:
            self.keys = list(restored[0])
            self.offsets = [0, *np.cumsum(restored[1], dtype=np.int64).tolist()]
        self.spill = spill.open("r+b" if restored is not None and spill.exists() else "w+b")
        self.spill.truncate(self.offsets[-1] * 8)
        self.spill.seek(0, 2)

    def flush(self) -> int:
        """Put the shingles written so far on disk; return how many documents they cover."""
        self.spill.flush()
        os.fsync(self.spill.fileno())
        return len(self)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def add(self, keys: np.ndarray, shingles: np.ndarray, offsets: np.ndarray) -> None:
        self.keys.append(keys)
        shingles.astype(np.uint64).tofile(self.spill)
        base = self.offsets[-1]
        self.offsets.extend((base + offsets[1:]).tolist())

    def candidate_pairs(self) -> np.ndarray:
        """int64 [pairs, 2] (earlier, later) sharing a band key; with-first-of-bucket, deduplicated."""
        n = len(self)
        if n < 2:
            return np.zeros((0, 2), np.int64)
        keys = np.concatenate(self.keys)
        sizes = np.diff(np.asarray(self.offsets))
        valid = sizes > 0
        pairs = []
        for j in range(keys.shape[1]):
            order = np.flatnonzero(valid)
            order = order[np.argsort(keys[order, j], kind="stable")]
            k = keys[order, j]
            new = np.ones(len(k), dtype=bool)
            new[1:] = k[1:] != k[:-1]
            group_start = np.maximum.accumulate(np.where(new, np.arange(len(k)), 0))
            member = ~new
            pairs.append(order[group_start[member]] * n + order[member])
        flat = np.unique(np.concatenate(pairs))
        return np.stack((flat // n, flat % n), axis=1)

    def duplicates(self) -> dict[int, tuple[int, float]]:
        """Removed document index → (kept document it duplicates, verified Jaccard)."""
        self.spill.close()
        n = len(self)
        pairs = self.candidate_pairs()
        if len(pairs) == 0:
            return {}
        off = np.asarray(self.offsets)
        data = np.memmap(self.spill_path, dtype=np.uint64, mode="r") if off[-1] else np.zeros(0, np.uint64)
        parent = list(range(n))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        best: dict[int, float] = {}
        for a, b in pairs.tolist():
            j = jaccard(data[off[a]: off[a + 1]], data[off[b]: off[b + 1]])
            if j < self.spec.threshold:
                continue
            best[a] = max(best.get(a, 0.0), j)
            best[b] = max(best.get(b, 0.0), j)
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        return {x: (find(x), j) for x, j in sorted(best.items()) if find(x) != x}
