"""Benchmark corpora with near-duplicates planted at known word-5-gram Jaccard levels.

Base documents are passages of natural English (the fetched corpus or `examples/data/`), cut at
paragraph boundaries and screened so that no two of them are themselves similar (true Jaccard of
their 5-gram sets < 0.2); each planted copy is the original with random word edits (substitute,
delete, insert) whose number is searched until the exact Jaccard to the original falls inside the
band. A dedup tool's recall per band and its false removals (distinct documents dropped) can then
be read off exactly.

    python benchmarks/planted_duplicates.py --corpus data/corpus --out /tmp/planted --base 3000

Shingles are lower-cased `\\w+` word 5-grams, the usual definition (Broder 1997; Gopher/FineWeb).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BANDS: dict[str, tuple[float, float]] = {
    "0.5-0.7": (0.5, 0.7),
    "0.7-0.8": (0.7, 0.8),
    "0.8-0.9": (0.8, 0.9),
    ">=0.9": (0.9, 1.0),  # edited, Jaccard in [0.9, 1.0)
    "exact": (1.0, 1.0),  # byte-identical copy
}
_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"\S+|\s+")


def word_shingles(text: str, k: int = 5) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + k]) for i in range(max(len(words) - k + 1, 1))}


def jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class PlantedCorpus:
    """Documents (`id`, `text`) plus the truth: which copy was made from which original."""

    documents: list[dict[str, str]] = field(default_factory=list)
    pairs: list[dict[str, object]] = field(default_factory=list)  # original, copy, band, jaccard
    distinct: list[str] = field(default_factory=list)  # ids that must all survive dedup

    def write(self, out: Path, files: int = 1) -> None:
        """`out/docs-NNNNN.jsonl` (round-robin over `files`) and `out/truth.json`."""
        out.mkdir(parents=True, exist_ok=True)
        handles = [open(out / f"docs-{i:05d}.jsonl", "w", encoding="utf-8") for i in range(files)]
        try:
            for i, doc in enumerate(self.documents):
                handles[i % files].write(json.dumps(doc, ensure_ascii=False) + "\n")
        finally:
            for fh in handles:
                fh.close()
        truth = {"pairs": self.pairs, "distinct": self.distinct, "bands": BANDS}
        (out / "truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")


def read_corpus_texts(corpus: Path) -> Iterator[str]:
    """Texts of every `*.jsonl` document (fetched corpus) or `*.txt` file (`examples/data`)."""
    for path in sorted(corpus.glob("*.txt")):
        yield path.read_text(encoding="utf-8")
    for path in sorted(corpus.glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)["text"]


def passages(texts: Iterable[str], min_words: int = 150, max_words: int = 600) -> Iterator[str]:
    """Cut documents into passages of whole paragraphs, `min_words`..`max_words` words each."""
    for text in texts:
        current: list[str] = []
        count = 0
        for para in text.split("\n\n"):
            current.append(para)
            count += len(para.split())
            if count >= min_words:
                if count <= max_words:
                    yield "\n\n".join(current)
                current, count = [], 0


def screen_distinct(texts: Sequence[str], limit: int, max_jaccard: float = 0.2) -> list[str]:
    """Keep up to `limit` texts no two of which have 5-gram Jaccard >= `max_jaccard`.

    Natural corpora hold real near-duplicates (Kings and Chronicles, boilerplate in addresses);
    they would otherwise count as false removals. Candidates come from datasketch LSH at a low
    threshold and are confirmed with the exact Jaccard.
    """
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=max_jaccard * 0.7, num_perm=64)
    kept: list[str] = []
    kept_shingles: list[set[tuple[str, ...]]] = []
    for text in texts:
        shingles = word_shingles(text)
        mh = MinHash(num_perm=64, seed=7)
        mh.update_batch([" ".join(s).encode() for s in shingles])
        if any(jaccard(shingles, kept_shingles[int(j)]) >= max_jaccard for j in lsh.query(mh)):
            continue
        lsh.insert(str(len(kept)), mh)
        kept.append(text)
        kept_shingles.append(shingles)
        if len(kept) == limit:
            break
    return kept


def edit_plan(text: str, rng: random.Random, vocabulary: Sequence[str]) -> list[tuple[int, str]]:
    """A random order of word edits (60% substitute, 20% delete, 20% insert), one per word
    position; applying its first m entries gives copies that drift further as m grows."""
    tokens = _TOKEN.findall(text)
    plan = []
    for i, token in enumerate(tokens):
        if token.isspace():
            continue
        kind = rng.random()
        if kind < 0.6:
            plan.append((i, rng.choice(vocabulary)))
        elif kind < 0.8:
            plan.append((i, ""))
        else:
            plan.append((i, f"{token} {rng.choice(vocabulary)}"))
    rng.shuffle(plan)
    return plan


def apply_edits(text: str, plan: Sequence[tuple[int, str]]) -> str:
    tokens = _TOKEN.findall(text)
    for i, replacement in plan:
        tokens[i] = replacement
    return re.sub(r"[ \t]{2,}", " ", "".join(tokens))


def near_copy(text: str, band: tuple[float, float], rng: random.Random,
              vocabulary: Sequence[str]) -> tuple[str, float] | None:
    """A copy of `text` whose 5-gram Jaccard to it lies in `band` (None if none was found)."""
    low, high = band
    if low == high == 1.0:
        return text, 1.0
    original = word_shingles(text)
    target = rng.uniform(low, high)
    plan = edit_plan(text, rng, vocabulary)
    lo, hi = 1, len(plan)
    best: tuple[str, float] | None = None
    while lo <= hi:  # binary search on the number of edits applied
        mid = (lo + hi) // 2
        copy = apply_edits(text, plan[:mid])
        j = jaccard(original, word_shingles(copy))
        if low <= j < high and (best is None or abs(j - target) < abs(best[1] - target)):
            best = (copy, j)
        if j > target:
            lo = mid + 1
        else:
            hi = mid - 1
    return best


def build_planted_corpus(texts: Sequence[str], base: int, per_band: int,
                         seed: int = 0) -> PlantedCorpus:
    """`base` distinct documents plus `per_band` copies per band of `BANDS`, shuffled."""
    rng = random.Random(seed)
    originals = screen_distinct(texts, base)
    if len(originals) < per_band * len(BANDS):
        raise ValueError(f"--base: only {len(originals)} distinct passages, need at least "
                         f"{per_band * len(BANDS)} for {per_band} per band; give more text")
    vocabulary = sorted({w for t in originals[:200] for w in _WORD.findall(t)})
    corpus = PlantedCorpus()
    docs = [{"id": f"orig-{i:06d}", "text": t} for i, t in enumerate(originals)]
    sources = rng.sample(range(len(originals)), per_band * len(BANDS))
    for b, name in enumerate(BANDS):
        for k in sources[b * per_band : (b + 1) * per_band]:
            made = near_copy(originals[k], BANDS[name], rng, vocabulary)
            if made is None:
                continue
            copy_id = f"copy-{name}-{k:06d}"
            docs.append({"id": copy_id, "text": made[0]})
            corpus.pairs.append({"original": f"orig-{k:06d}", "copy": copy_id, "band": name,
                                 "jaccard": round(made[1], 4)})
    corpus.distinct = [d["id"] for d in docs[: len(originals)]]
    rng.shuffle(docs)
    corpus.documents = docs
    return corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("examples/data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", type=int, default=3000, help="distinct original documents")
    parser.add_argument("--per-band", type=int, default=200, help="planted copies per band")
    parser.add_argument("--files", type=int, default=1, help="JSONL files to spread docs over")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    texts = list(passages(read_corpus_texts(args.corpus)))
    random.Random(args.seed).shuffle(texts)
    corpus = build_planted_corpus(texts, args.base, args.per_band, args.seed)
    corpus.write(args.out, args.files)
    counts: dict[str, int] = {}
    for pair in corpus.pairs:
        counts[str(pair["band"])] = counts.get(str(pair["band"]), 0) + 1
    print(json.dumps({"documents": len(corpus.documents), "distinct": len(corpus.distinct),
                      "pairs": counts, "out": str(args.out)}, indent=1))


if __name__ == "__main__":
    main()
