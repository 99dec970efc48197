"""CCNet-style perplexity filter with a word n-gram language model of our own, in numpy.

Wenzek et al. 2020, "CCNet: Extracting High Quality Monolingual Datasets from Web Crawl Data",
section 3.3: score documents with an n-gram LM trained on reference text and keep a perplexity
band (they bucket head/middle/tail at the 33rd/66th percentiles). Here the model is stupid
backoff (Brants et al. 2007, alpha 0.4) over lowercased words with add-one unigrams: it needs only
counts, which numpy keeps as sorted uint64 n-gram keys, so training and scoring are a few
``np.unique`` / ``searchsorted`` calls per batch. Its scores are not normalised probabilities, but
the band only needs the ranking. Documents outside the ``[lowPercentile, highPercentile]`` band
of the corpus' scores are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from llmfab.data.hashing import mix64, word_hashes

ALPHA = 0.4
_C = np.uint64(0x100000001B3)


def _ngram_keys(words: np.ndarray, offsets: np.ndarray, order: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per k in 1..order: key of the k-gram ending at each word, and whether it fits in its document."""
    n = len(words)
    doc = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    pos = np.arange(n) - offsets[doc] if n else np.zeros(0, np.int64)
    keys, valid = [words], [np.ones(n, dtype=bool)]
    for k in range(2, order + 1):
        prev = np.concatenate(([np.uint64(0)], keys[-1][:-1])) if n else keys[-1]
        with np.errstate(over="ignore"):
            keys.append(mix64(prev * _C + words + np.uint64(k)))
        valid.append(pos >= k - 1)
    return keys, valid


class NgramModel:
    """Stupid-backoff word n-gram model over hashed words."""

    def __init__(self, order: int) -> None:
        self.order = order
        self.keys: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        self.total = 0

    def fit(self, batches: Iterable[list[str]]) -> NgramModel:
        parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(self.order)]
        for texts in batches:
            w, off = word_hashes(texts)
            keys, valid = _ngram_keys(w, off, self.order)
            self.total += len(w)
            for k in range(self.order):
                u, c = np.unique(keys[k][valid[k]], return_counts=True)
                parts[k].append((u, c))
        for k in range(self.order):
            if not parts[k]:
                self.keys.append(np.zeros(0, np.uint64))
                self.counts.append(np.zeros(0, np.int64))
                continue
            allk = np.concatenate([p[0] for p in parts[k]])
            allc = np.concatenate([p[1] for p in parts[k]])
            u, inv = np.unique(allk, return_inverse=True)
            self.keys.append(u)
            self.counts.append(np.bincount(inv, weights=allc).astype(np.int64))
        return self

    def _lookup(self, k: int, query: np.ndarray) -> np.ndarray:
        keys, counts = self.keys[k], self.counts[k]
        if len(keys) == 0:
            return np.zeros(len(query), np.int64)
        idx = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        return np.where(keys[idx] == query, counts[idx], 0)

    def perplexity(self, texts: list[str]) -> np.ndarray:
        """Per document: exp of the mean negative log score of its words (inf for no words)."""
        w, off = word_hashes(texts)
        n = len(w)
        out = np.full(len(texts), np.inf)
        if n == 0:
            return out
        keys, valid = _ngram_keys(w, off, self.order)
        vocab = max(len(self.keys[0]), 1)
        score = (self._lookup(0, keys[0]) + 1.0) / (self.total + vocab) * ALPHA ** (self.order - 1)
        found_higher = np.zeros(n, dtype=bool)
        for k in range(self.order - 1, 0, -1):  # highest order first
            c = self._lookup(k, keys[k])
            ctx = np.zeros(n, np.int64)
            ctx[1:] = self._lookup(k - 1, keys[k - 1][:-1])
            use = valid[k] & (c > 0) & (ctx > 0) & ~found_higher
            score = np.where(use, c / np.maximum(ctx, 1) * ALPHA ** (self.order - 1 - k), score)
            found_higher |= use
        logs = -np.log(score)
        counts = np.diff(off)
        sums = np.add.reduceat(logs, off[:-1][counts > 0]) if n else np.zeros(0)
        out[counts > 0] = np.exp(sums / counts[counts > 0])
        return out


def band_mask(ppl: np.ndarray, low_percentile: float, high_percentile: float) -> tuple[np.ndarray, float, float]:
    """(keep mask, low cut, high cut) keeping documents within the percentile band."""
    finite = ppl[np.isfinite(ppl)]
    if len(finite) == 0:
        return np.zeros(len(ppl), dtype=bool), np.inf, np.inf
    lo = float(np.percentile(finite, low_percentile)) if low_percentile > 0 else -np.inf
    hi = float(np.percentile(finite, high_percentile)) if high_percentile < 100 else np.inf
    return (ppl >= lo) & (ppl <= hi), lo, hi
