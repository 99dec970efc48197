"""Web-like benchmark corpora of any size, built from the fetched English corpus.

The fetched corpus is ~38 MB of distinct text; the throughput benchmark wants >= 100 MB. Each
document here is a random set of paragraphs of one source (so documents differ from each other:
two of them share a paragraph at most now and then, far below any near-duplicate threshold), with
a web-like length distribution (log-normal, median ~2 KB). Then, as on the web, a few percent are
exact copies, near copies (a few percent of words edited) and junk that the quality filters exist
for: navigation/cookie boilerplate, lorem ipsum, JavaScript, repeated lines, too-short pages.

    python benchmarks/data_corpus.py --corpus data/corpus --out /tmp/bench-100mb --mb 100 --files 8
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from planted_duplicates import apply_edits, edit_plan

EXACT_SHARE = 0.03
NEAR_SHARE = 0.03
JUNK_SHARE = 0.04
GENERATOR_VERSION = 4  # bump when the output changes, so cached corpora are rebuilt

_NAV = ["Home", "About us", "Contact", "Blog", "Shop", "Login", "Register", "Privacy policy",
        "Terms of use", "Careers", "Press", "Help"]
_JUNK_LINES = [
    "This website uses cookies to improve your experience. Accept all cookies.",
    "Please enable JavaScript in your browser to view this page.",
    "Copyright 2024 Example Media Group. All rights reserved.",
    "Click here to subscribe to our newsletter!",
]
_CODE = ("function init() {\n  var x = document.getElementById('main');\n  x.style.display = 'none';\n"
         "  for (var i = 0; i < 10; i++) { console.log(i); }\n}\n")
_LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt "
          "ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation.")


def split_long(paragraph: str, limit: int = 1200) -> list[str]:
    """Cut a paragraph longer than `limit` characters at sentence ends (some sources, e.g. the
    State of the Union texts, put a whole address in one paragraph)."""
    if len(paragraph) <= limit:
        return [paragraph]
    pieces, current = [], ""
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        if current and len(current) + len(sentence) > limit:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}" if current else sentence
    return [*pieces, current] if current else pieces


def load_paragraphs(corpus: Path) -> dict[str, list[str]]:
    """source name -> its paragraphs (>= 40 characters, long ones split), from `<corpus>/*.jsonl`."""
    pools: dict[str, list[str]] = {}
    for path in sorted(corpus.glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)
                pool = pools.setdefault(doc["source"], [])
                for para in doc["text"].split("\n\n"):
                    pool.extend(p for p in split_long(para) if len(p) >= 40)
    if not pools:
        raise SystemExit(f"--corpus: no *.jsonl documents in {corpus}; run scripts/fetch_corpus.py")
    return pools


def junk_document(rng: random.Random, paragraphs: list[str]) -> str:
    kind = rng.randrange(5)
    if kind == 0:  # a navigation page: menus, cookie banner, one paragraph
        menu = "\n".join(rng.sample(_NAV, 8))
        return f"{menu}\n\n{rng.choice(paragraphs)}\n\n" + "\n".join(_JUNK_LINES)
    if kind == 1:
        return f"{rng.choice(paragraphs)}\n\n{_LOREM}\n\n{_LOREM}"
    if kind == 2:
        return f"{rng.choice(paragraphs)}\n\n{_CODE * rng.randint(2, 6)}"
    if kind == 3:  # a line repeated many times
        line = rng.choice(paragraphs)[:80]
        return "\n".join([line] * rng.randint(10, 40))
    return " ".join(rng.choice(paragraphs).split()[: rng.randint(3, 30)])  # too short


def generate(corpus: Path, out: Path, mb: float, files: int, seed: int = 0) -> dict[str, object]:
    """Write `files` JSONL files totalling about `mb` MB of text; returns counts."""
    rng = random.Random(seed)
    pools = load_paragraphs(corpus)
    names = sorted(pools)
    weights = [sum(len(p) for p in pools[n]) for n in names]
    target = int(mb * 1e6)
    out.mkdir(parents=True, exist_ok=True)
    handles = [open(out / f"docs-{i:05d}.jsonl", "w", encoding="utf-8") for i in range(files)]
    recent: list[str] = []  # documents that later copies are made from
    counts = {"documents": 0, "exact": 0, "near": 0, "junk": 0, "bytes": 0}
    vocabulary = sorted({w for p in pools[names[0]][:2000] for w in p.split()})
    try:
        while counts["bytes"] < target:
            roll = rng.random()
            if recent and roll < EXACT_SHARE:
                text, kind = rng.choice(recent), "exact"
            elif recent and roll < EXACT_SHARE + NEAR_SHARE:
                original = rng.choice(recent)
                plan = edit_plan(original, rng, vocabulary)
                # ~1.5% of words edited: word-5-gram Jaccard ~0.8-0.9, what near dedup is for
                text, kind = apply_edits(original, plan[: max(1, len(plan) // 70)]), "near"
            elif roll < EXACT_SHARE + NEAR_SHARE + JUNK_SHARE:
                source = rng.choices(names, weights)[0]
                text, kind = junk_document(rng, pools[source]), "junk"
            else:
                source = rng.choices(names, weights)[0]
                size = math.exp(rng.gauss(math.log(2000), 0.8))
                pool = pools[source]
                picked: dict[int, None] = {}  # distinct paragraphs, in the order drawn
                length = 0
                while length < size and len(picked) < len(pool):
                    i = rng.randrange(len(pool))
                    if i not in picked:
                        picked[i] = None
                        length += len(pool[i])
                text, kind = "\n\n".join(pool[i] for i in picked), "documents"
                recent.append(text)
                if len(recent) > 2000:
                    recent.pop(rng.randrange(len(recent)))
            i = counts["documents"] + counts["exact"] + counts["near"] + counts["junk"]
            record = {"id": f"bench-{i:08d}", "text": text}
            handles[i % files].write(json.dumps(record, ensure_ascii=False) + "\n")
            counts[kind] += 1
            counts["bytes"] += len(text.encode("utf-8"))
    finally:
        for fh in handles:
            fh.close()
    total = counts["documents"] + counts["exact"] + counts["near"] + counts["junk"]
    return {"total_documents": total, **counts, "files": files, "out": str(out)}


def ensure_corpus(corpus: Path, out: Path, mb: float, files: int, seed: int = 0) -> dict[str, object]:
    """Generate once per (size, files, seed); a `meta.json` written last marks it complete."""
    meta = out / "meta.json"
    wanted = {"mb": mb, "files": files, "seed": seed, "generator": GENERATOR_VERSION}
    if meta.exists():
        info = json.loads(meta.read_text())
        if info.get("params") == wanted:
            return dict(info)
    for old in out.glob("docs-*.jsonl"):
        old.unlink()
    info = generate(corpus, out, mb, files, seed)
    info["params"] = wanted
    meta.write_text(json.dumps(info, indent=1))
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(ensure_corpus(args.corpus, args.out, args.mb, args.files, args.seed), indent=1))


if __name__ == "__main__":
    main()
