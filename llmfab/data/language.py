"""Language identification with the naive Bayes model that ships inside ``py3langid``.

Lui & Baldwin 2012, "langid.py: An Off-the-shelf Language Identification Tool" (97 languages);
nothing is downloaded. Documents whose top language is not one of ``spec.languages`` or whose
normalised probability is below ``minConfidence`` are dropped. Only the first
:data:`SAMPLE_CHARS` characters are classified: a few sentences decide the language.

py3langid walks its byte automaton in a Python loop (~3 µs per byte, the most expensive step of
the whole pipeline). :func:`detect_batch` walks it for a whole batch at once, one numpy step per
byte position across all documents, then scores all documents with one sparse matrix product,
with the same model and the same normalisation (``classify`` gives the same answers; a test checks it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import sparse

from llmfab.api.dataset import LanguageFilter

SAMPLE_CHARS = 1500
_MODEL: dict[str, Any] = {}


def identifier() -> Any:
    """The py3langid model, loaded once per process (~2 s)."""
    if "li" not in _MODEL:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        li = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        _MODEL.update(li=li, nm=np.frombuffer(li.tk_nextmove, dtype=np.uint32).astype(np.int64),
                      rowbase=np.asarray(li._rowbase, dtype=np.int64), out=np.asarray(li.tk_output, dtype=np.int64),
                      ptc=li.nb_ptc.astype(np.float32))
    return _MODEL["li"]


def detect(text: str) -> tuple[str, float]:
    lang, prob = identifier().classify(text[:SAMPLE_CHARS])
    return str(lang), float(prob)


def detect_batch(texts: list[str]) -> list[tuple[str, float]]:
    """``detect`` for many documents at once (vectorised across documents)."""
    li = identifier()
    nm, rowbase, out = _MODEL["nm"], _MODEL["rowbase"], _MODEL["out"]
    n = len(texts)
    if n == 0:
        return []
    encoded = [li._encode(t[:SAMPLE_CHARS]) for t in texts]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
    order = np.argsort(-lengths, kind="stable")  # longest first: the active documents are a prefix
    sorted_len = lengths[order]
    width = int(sorted_len[0]) if n else 0
    grid = np.zeros((n, max(width, 1)), dtype=np.int64)
    flat = np.frombuffer(b"".join(encoded[i] for i in order), dtype=np.uint8)
    rows = np.repeat(np.arange(n), sorted_len)
    cols = np.arange(len(flat)) - np.repeat(np.concatenate(([0], np.cumsum(sorted_len)[:-1])), sorted_len)
    grid[rows, cols] = flat
    state = np.zeros(n, dtype=np.int64)
    doc_parts: list[np.ndarray] = []
    feat_parts: list[np.ndarray] = []
    active = n
    for t in range(width):
        while active and sorted_len[active - 1] <= t:
            active -= 1
        s = nm[rowbase[state[:active]] + grid[:active, t]]
        state[:active] = s
        f = out[s]
        hit = np.flatnonzero(f >= 0)
        if len(hit):
            doc_parts.append(hit)
            feat_parts.append(f[hit])
    n_classes = len(li.nb_classes)
    scores = np.zeros((n, n_classes), dtype=np.float32)
    if doc_parts:
        docs = np.concatenate(doc_parts)
        feats = np.concatenate(feat_parts)
        n_feat = len(li.nb_ptc)
        pair, counts = np.unique(docs * n_feat + feats, return_counts=True)
        pdoc, pfeat = pair // n_feat, pair % n_feat
        weight = np.log1p(counts.astype(np.float32))
        visits = sparse.csr_matrix((weight, (pdoc, pfeat)), shape=(n, n_feat), dtype=np.float32)
        scores = np.asarray(visits @ _MODEL["ptc"], dtype=np.float32)
        has = np.zeros(n, dtype=bool)
        has[pdoc] = True
        scores[has] += li.nb_pc
    results: list[tuple[str, float]] = [("", 0.0)] * n
    for row, doc in enumerate(order.tolist()):
        sc = scores[row] * np.float32(1.0 / math.sqrt(int(lengths[doc]) or 1))
        sc = np.exp(sc - sc.max())
        sc /= sc.sum()
        for i, j in li._alias_pairs:
            sc[i] += sc[j]
            sc[j] = 0.0
        best = int(sc.argmax())
        results[doc] = (str(li.nb_classes[best]), float(sc[best]))
    return results


class LanguageIdFilter:
    name = "language"

    def __init__(self, spec: LanguageFilter) -> None:
        self.spec = spec
        self.languages = frozenset(spec.languages)

    def _reason(self, lang: str, prob: float) -> str | None:
        if lang not in self.languages:
            return f"language_{lang}"
        if prob < self.spec.min_confidence:
            return "low_confidence"
        return None

    def __call__(self, text: str) -> tuple[str, str | None]:
        return text, self._reason(*detect(text))

    def batch(self, texts: list[str]) -> list[tuple[str, str | None]]:
        return [(t, self._reason(*r)) for t, r in zip(texts, detect_batch(texts), strict=True)]
