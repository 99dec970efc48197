"""Generated test corpora: English-like documents with planted junk, duplicates and near duplicates.

Sentences are built from a fixed English vocabulary with a seeded generator, so documents pass
the quality filters and the language filter as English, distinct documents share almost no word
5-grams, and every planted case (exact copy, near copy at a known Jaccard, boilerplate, code,
other languages, repeated lines) is known by construction.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NOUNS = ("house river garden letter window morning village doctor teacher market country family "
         "mountain station evening company question problem story picture winter summer friend "
         "brother sister mother father captain soldier farmer student library kitchen bridge forest "
         "island harbour castle church school office street carriage journey weather silence memory "
         "promise dinner music thought answer reason moment history meadow valley ocean engine "
         "machine paper pencil basket candle mirror shadow feather stone garden orchard cottage").split()
ADJECTIVES = ("old young quiet bright dark cold warm small large gentle careful happy sudden strange "
              "pleasant serious curious honest patient modest clever silent distant ancient narrow broad "
              "heavy empty busy famous simple golden").split()
VERBS = ("watched visited found carried opened closed described remembered noticed followed "
         "admired repaired painted crossed reached discovered explained answered wrote read bought "
         "sold built cleaned covered").split()
ADVERBS = "slowly quickly quietly carefully happily suddenly gently certainly rarely often".split()
CONNECT = ("and then", "but later", "while", "because", "although", "so that", "after which")


def sentence(rng: random.Random) -> str:
    parts = [f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(ADVERBS)} {rng.choice(VERBS)} "
             f"the {rng.choice(NOUNS)} of the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"]
    if rng.random() < 0.6:
        parts.append(f"{rng.choice(CONNECT)} a {rng.choice(NOUNS)} {rng.choice(VERBS)} it with "
                     f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}")
    return " ".join(parts) + rng.choice([".", ".", ".", "!", "?"])


def document(rng: random.Random, paragraphs: int = 3, sentences: int = 4) -> str:
    return "\n\n".join(" ".join(sentence(rng) for _ in range(sentences)) for _ in range(paragraphs))


def near_copy(text: str, target_jaccard: float, rng: random.Random, k: int = 5) -> str:
    """Replace words until the word-k-gram Jaccard with ``text`` is at most ``target_jaccard``
    (just below it: a binary search over how many of a shuffled list of positions change)."""
    words = text.split(" ")
    positions = list(range(len(words)))
    rng.shuffle(positions)
    repl = [rng.choice(NOUNS) + "s" for _ in positions]

    def changed(m: int) -> str:
        out = list(words)
        for p, r in zip(positions[:m], repl[:m], strict=True):
            out[p] = r
        return " ".join(out)

    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi) // 2
        if shingle_jaccard(text, changed(mid), k) <= target_jaccard:
            hi = mid
        else:
            lo = mid + 1
    return changed(lo)


def shingle_jaccard(a: str, b: str, k: int = 5) -> float:
    def sh(t: str) -> set[tuple[str, ...]]:
        w = "".join(c.lower() if c.isalnum() else " " for c in t).split()
        return {tuple(w[i: i + k]) for i in range(max(1, len(w) - k + 1))}

    sa, sb = sh(a), sh(b)
    return len(sa & sb) / len(sa | sb)


GERMAN = ("Der alte Mann ging langsam durch den Garten und dachte an die Zeit, als er noch jung war. "
          "Die Kinder spielten am Fluss, während die Mutter das Essen für die ganze Familie kochte. "
          "Am Abend saßen alle zusammen am Tisch und erzählten sich Geschichten aus dem Dorf. ") * 3
FRENCH = ("Le vieil homme marchait lentement dans le jardin et pensait au temps de sa jeunesse. "
          "Les enfants jouaient près de la rivière pendant que leur mère préparait le repas du soir. "
          "Le soir, toute la famille se réunissait autour de la table pour raconter des histoires. ") * 3
CODE = "\n".join(["def main():", "    for i in range(10) {", "        print(i)", "    }", "    return 0"] * 8)
REPEATED_LINES = "\n".join(["Click here to subscribe to our newsletter today."] * 30)
LOREM = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20


def write_corpus(directory: Path, documents: int = 60, seed: int = 0) -> dict[str, int]:
    """A JSONL corpus with planted cases; returns how many of each were planted."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    docs = [document(rng) for _ in range(documents)]
    docs[5] += "\nPlease enable JavaScript to see the comments."  # a line C4 removes, document kept
    records = [{"text": d, "id": f"doc{i}"} for i, d in enumerate(docs)]
    planted = {"clean": documents, "exact": 3, "near": 3, "junk": 5}
    records += [{"text": docs[i], "id": f"exact{i}"} for i in range(planted["exact"])]
    records += [{"text": near_copy(docs[10 + i], 0.85, rng), "id": f"near{i}"} for i in range(planted["near"])]
    records += [{"text": t, "id": f"junk{i}"} for i, t in enumerate((GERMAN, FRENCH, CODE, REPEATED_LINES, LOREM))]
    rng.shuffle(records)
    with (directory / "corpus.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return planted
