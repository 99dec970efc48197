"""Vectorised, process-independent hashing of words and word n-grams over a whole batch.

MinHash and exact Jaccard need the same shingle hashes in every worker process and on every run,
so Python's salted ``hash()`` is out, and a Python loop per shingle is too slow (datasketch's
``update()`` path). Instead a batch of documents is one UTF-8 byte buffer (what an Arrow string
array already is) and every word hash is a polynomial hash read off prefix sums in numpy.

Words are maximal runs of ASCII letters/digits or non-ASCII bytes, lowercased (ASCII only):
punctuation and case do not make two copies of a text look different.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

MASK64 = (1 << 64) - 1
_P = 0x9E3779B97F4A7C15  # odd: invertible modulo 2**64
_P_INV = pow(_P, -1, 1 << 64)
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[ord("0"): ord("9") + 1] = True
_WORD_BYTE[ord("a"): ord("z") + 1] = True
_WORD_BYTE[ord("A"): ord("Z") + 1] = True
_WORD_BYTE[0x80:] = True
_LOWER = np.arange(256, dtype=np.uint64) + np.uint64(1)
_LOWER[ord("A"): ord("Z") + 1] += np.uint64(32)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the output (uint64 in, uint64 out)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


_POWERS: dict[int, np.ndarray] = {}


def _powers(base: int, n: int) -> np.ndarray:
    """base**k mod 2**64 for k < n, cached per process and grown by doubling."""
    have = _POWERS.get(base)
    if have is None or len(have) < n:
        size = max(n, 2 * len(have) if have is not None else 1 << 20)
        p = np.full(size, base, dtype=np.uint64)
        p[0] = 1
        have = _POWERS[base] = np.cumprod(p, dtype=np.uint64)  # wraps modulo 2**64, as wanted
    return have[:n]


def batch_bytes(texts: pa.Array | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes of all documents, int64 byte offsets with len(texts)+1 entries)."""
    arr = texts if isinstance(texts, pa.Array) else pa.array(texts, type=pa.large_string())
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    arr = pa.concat_arrays([arr]) if arr.offset else arr
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[: len(arr) + 1]
    data = arr.buffers()[2]
    buf = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return buf[: offsets[-1]], offsets - offsets[0]


def word_hashes(texts: pa.Array | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash of every word of every document in order, int64 word offsets per document)."""
    buf, offsets = batch_bytes(texts)
    n = len(buf)
    if n == 0:
        return np.zeros(0, np.uint64), np.zeros(len(offsets), np.int64)
    is_word = _WORD_BYTE[buf]
    boundary = np.zeros(n + 1, dtype=bool)
    boundary[offsets] = True  # a word never runs across two documents
    prev_word = np.concatenate(([False], is_word[:-1])) & ~boundary[:-1]
    next_word = np.concatenate((is_word[1:], [False])) & ~boundary[1:]
    starts = np.flatnonzero(is_word & ~prev_word)
    ends = np.flatnonzero(is_word & ~next_word) + 1
    codes = _LOWER[buf]
    with np.errstate(over="ignore"):
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(codes * _powers(_P, n), out=prefix[1:])
        h = (prefix[ends] - prefix[starts]) * _powers(_P_INV, n)[starts]
    h = mix64(h ^ (ends - starts).astype(np.uint64))
    word_offsets = np.searchsorted(starts, offsets).astype(np.int64)
    return h, word_offsets


def shingle_hashes(texts: pa.Array | list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of word k-grams within each document and int64 offsets per document.

    A document with fewer than ``k`` (but some) words has one shingle of all its words, so short
    texts still deduplicate; a document without words has none.
    """
    w, woff = word_hashes(texts)
    n_docs = len(woff) - 1
    counts = np.diff(woff)
    if len(w) == 0:
        return np.zeros(0, np.uint64), np.zeros(n_docs + 1, np.int64)
    coeff = mix64(np.arange(1, k + 1, dtype=np.uint64)) | np.uint64(1)
    m = len(w)
    with np.errstate(over="ignore"):
        acc = np.zeros(m, dtype=np.uint64)
        padded = np.concatenate((w, np.zeros(k, np.uint64)))
        for i in range(k):
            acc += padded[i: i + m] * coeff[i]
    doc_of = np.repeat(np.arange(n_docs), counts)
    pos = np.arange(m) - woff[doc_of]
    # a full k-gram starts where k words remain in its document; a short document keeps position 0
    # (its sum then covers only its own words, because the rest would belong to the next document)
    remaining = counts[doc_of] - pos
    keep = (remaining >= k) | ((pos == 0) & (counts[doc_of] < k))
    short = (pos == 0) & (counts[doc_of] < k)
    if short.any():  # recompute short documents' sums without the next document's words
        for j in np.flatnonzero(short):
            c = counts[doc_of[j]]
            with np.errstate(over="ignore"):
                acc[j] = np.sum(w[j: j + c] * coeff[:c], dtype=np.uint64)
    sh = mix64(acc[keep])
    per_doc = np.bincount(doc_of[keep], minlength=n_docs)
    sh_off = np.zeros(n_docs + 1, np.int64)
    np.cumsum(per_doc, out=sh_off[1:])
    return sh, sh_off


def unique_per_document(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of each document's segment (the shingle *set*), with new offsets."""
    n_docs = len(offsets) - 1
    if len(values) == 0:
        return values, np.zeros(n_docs + 1, np.int64)
    doc = np.repeat(np.arange(n_docs), np.diff(offsets))
    order = np.lexsort((values, doc))
    v, d = values[order], doc[order]
    first = np.ones(len(v), dtype=bool)
    first[1:] = (v[1:] != v[:-1]) | (d[1:] != d[:-1])
    v, d = v[first], d[first]
    new_off = np.zeros(n_docs + 1, np.int64)
    np.cumsum(np.bincount(d, minlength=n_docs), out=new_off[1:])
    return v, new_off
