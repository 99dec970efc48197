"""Near-dedup quality: recall per planted Jaccard band and false removals, llmfab vs datasketch.

The corpus is natural English passages with copies planted at known word-5-gram Jaccard levels
(`planted_duplicates.py`). llmfab runs its near-dedup step at the spec defaults
(`NearDedup()`: 128 permutations, word 5-grams, threshold 0.8, LSH banding chosen from the
threshold, then exact-Jaccard verification); datasketch runs `MinHashLSH(threshold=0.8,
num_perm=128)` with `MinHash.bulk`, keeping the first document of each candidate set.

A planted pair counts as caught when one of its two documents is removed and the other kept; a
false removal is a removed document that belongs to no planted pair, or the second removal of a
pair (both gone).

    .venv/bin/python benchmarks/data_near_dedup_quality.py --corpus data/corpus --base 3000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from planted_duplicates import (
    BANDS,
    PlantedCorpus,
    build_planted_corpus,
    passages,
    read_corpus_texts,
    word_shingles,
)

THRESHOLD = 0.8
PERMUTATIONS = 128


def llmfab_removed(texts: list[str]) -> set[int]:
    """Indices llmfab's near-dedup step removes, at its defaults."""
    from llmfab.api.dataset import NearDedup
    from llmfab.data.near_dedup import MinHasher, NearDuplicateIndex

    spec = NearDedup()
    assert spec.threshold == THRESHOLD and spec.permutations == PERMUTATIONS
    hasher = MinHasher(spec)
    with tempfile.TemporaryDirectory() as tmp:
        index = NearDuplicateIndex(spec, Path(tmp) / "shingles.bin", hasher.bands)
        for start in range(0, len(texts), 1000):
            index.add(*hasher.sketch(texts[start : start + 1000]))
        return set(index.duplicates())


def datasketch_removed(texts: list[str]) -> set[int]:
    """Indices removed by datasketch MinHashLSH at the same threshold and permutations."""
    from datasketch import MinHash, MinHashLSH

    shingles = [[" ".join(s).encode() for s in word_shingles(t)] for t in texts]
    hashes = MinHash.bulk(shingles, num_perm=PERMUTATIONS, seed=1)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=PERMUTATIONS)
    removed = set()
    for i, mh in enumerate(hashes):
        if lsh.query(mh):
            removed.add(i)
        else:
            lsh.insert(str(i), mh)
    return removed


def score(corpus: PlantedCorpus, removed_ids: set[str]) -> dict[str, object]:
    caught: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    in_pair: set[str] = set()
    both_removed = 0
    for pair in corpus.pairs:
        a, b = str(pair["original"]), str(pair["copy"])
        in_pair.update((a, b))
        band = str(pair["band"])
        caught[band][1] += 1
        gone = (a in removed_ids) + (b in removed_ids)
        caught[band][0] += gone >= 1
        both_removed += gone == 2
    false = len(removed_ids - in_pair) + both_removed
    return {
        "recall": {b: round(caught[b][0] / caught[b][1], 4) for b in BANDS if caught[b][1]},
        "pairs": {b: caught[b][1] for b in BANDS},
        "removed": len(removed_ids),
        "false_removals": false,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    parser.add_argument("--base", type=int, default=3000)
    parser.add_argument("--per-band", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    texts = list(passages(read_corpus_texts(args.corpus)))
    random.Random(args.seed).shuffle(texts)
    corpus = build_planted_corpus(texts, args.base, args.per_band, args.seed)
    docs = [d["text"] for d in corpus.documents]
    ids = [d["id"] for d in corpus.documents]
    print(f"corpus: {len(docs)} documents ({len(corpus.distinct)} distinct originals, "
          f"{len(corpus.pairs)} planted copies), {sum(len(d) for d in docs) / 1e6:.1f} MB")
    results = {}
    for name, fn in [("llmfab", llmfab_removed), ("datasketch", datasketch_removed)]:
        started = time.monotonic()
        removed = fn(docs)
        seconds = time.monotonic() - started
        results[name] = {**score(corpus, {ids[i] for i in removed}), "seconds": round(seconds, 2)}
        r = results[name]
        recall = "  ".join(f"{b}: {v:.3f}" for b, v in r["recall"].items())  # type: ignore[attr-defined]
        print(f"{name:10s} recall {recall}  false removals {r['false_removals']}  "
              f"({r['removed']} removed, {seconds:.1f} s)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
