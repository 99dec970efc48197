"""The benchmark corpus generator plants copies at the Jaccard levels it claims."""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import planted_duplicates as pd  # noqa: E402


def test_planted_copies_fall_inside_their_band_and_originals_are_distinct() -> None:
    texts = list(pd.passages(pd.read_corpus_texts(ROOT / "examples" / "data")))
    random.Random(0).shuffle(texts)
    corpus = pd.build_planted_corpus(texts, base=120, per_band=4, seed=0)
    by_id = {d["id"]: d["text"] for d in corpus.documents}
    assert len(corpus.pairs) >= 18
    for pair in corpus.pairs:
        low, high = pd.BANDS[str(pair["band"])]
        j = pd.jaccard(pd.word_shingles(by_id[str(pair["original"])]),
                       pd.word_shingles(by_id[str(pair["copy"])]))
        assert (low <= j < high) or (low == high == j == 1.0), pair
    originals = [pd.word_shingles(by_id[i]) for i in corpus.distinct[:60]]
    for a in range(len(originals)):
        for b in range(a + 1, len(originals)):
            assert pd.jaccard(originals[a], originals[b]) < 0.2
