"""Exact and near dedup on planted duplicates at known word-5-gram Jaccard levels."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from llmfab.api.dataset import NearDedup
from llmfab.data.exact_dedup import ExactDeduplicator, document_key
from llmfab.data.hashing import shingle_hashes, word_hashes
from llmfab.data.near_dedup import MinHasher, NearDuplicateIndex, candidate_probability, jaccard, lsh_params

from .corpus import document, near_copy, shingle_jaccard


def test_word_hashes_ignore_case_punctuation_and_process() -> None:
    h, off = word_hashes(["Hello, World!", "hello world", "ｈｅｌｌｏ"])
    assert list(off) == [0, 2, 4, 5]
    assert list(h[:2]) == list(h[2:4])
    code = ("from llmfab.data.hashing import shingle_hashes; "
            "print(shingle_hashes(['the quick brown fox jumps over the lazy dog'], 5)[0].tolist())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outs) == 1
    assert outs.pop().strip() == str(shingle_hashes(["the quick brown fox jumps over the lazy dog"], 5)[0].tolist())


def test_shingles_stay_inside_documents() -> None:
    _sh, off = shingle_hashes(["a b c d e f", "a b", "", "c d e"], 5)
    assert list(np.diff(off)) == [2, 1, 0, 1]
    apart, _ = shingle_hashes(["a b c", "d e f"], 5)
    together, _ = shingle_hashes(["a b c d e f"], 5)
    assert len(apart) == 2 and not set(apart.tolist()) & set(together.tolist())


def test_exact_dedup_keeps_first_copy() -> None:
    d = ExactDeduplicator()
    assert d.check(document_key("a"), 0) is None
    assert d.check(document_key("b"), 1) is None
    assert d.check(document_key("a"), 2) == 0


def test_lsh_params_make_threshold_pairs_candidates() -> None:
    for threshold in (0.7, 0.8, 0.9):
        bands, rows = lsh_params(threshold, 128)
        assert bands * rows <= 128
        assert candidate_probability(threshold, bands, rows) >= 0.999
    assert lsh_params(0.8, 128) == (25, 5)


def test_near_dedup_recall_and_no_false_removals(tmp_path: Path) -> None:
    rng = random.Random(11)
    originals = [document(rng, paragraphs=2, sentences=5) for _ in range(150)]
    docs = list(originals)
    planted: dict[int, tuple[int, float]] = {}  # copy index -> (original, jaccard)
    for i, target in enumerate([0.97] * 12 + [0.91] * 12 + [0.89] * 12 + [0.83] * 12):
        copy = near_copy(originals[i], target, rng)
        planted[len(docs)] = (i, shingle_jaccard(originals[i], copy))
        docs.append(copy)
    below = {}
    for i in range(60, 72):  # related but clearly below the 0.8 threshold: must survive
        copy = near_copy(originals[i], 0.65, rng)
        below[len(docs)] = shingle_jaccard(originals[i], copy)
        docs.append(copy)
    spec = NearDedup()
    hasher = MinHasher(spec)
    index = NearDuplicateIndex(spec, tmp_path / "sh.u64", hasher.bands)
    for start in range(0, len(docs), 64):  # several batches, as the pipeline feeds it
        index.add(*hasher.sketch(docs[start: start + 64]))
    removed = index.duplicates()
    high = [c for c, (_, j) in planted.items() if j >= 0.9]
    mid = [c for c, (_, j) in planted.items() if 0.8 <= j < 0.9]
    assert len(high) >= 12 and len(mid) >= 12
    assert all(c in removed and removed[c][0] == planted[c][0] for c in high + mid)
    assert not set(range(150)) & set(removed), "an original (distinct document) was removed"
    assert not set(below) & set(removed), f"pairs below the threshold removed: {below}"
    sh, off = shingle_hashes(docs[:2], 5)
    assert jaccard(np.unique(sh[off[0]:off[1]]), np.unique(sh[off[0]:off[1]])) == 1.0
