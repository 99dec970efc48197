#!/usr/bin/env python3
"""Cut the small committed sample (`examples/data/`) out of a fetched corpus, deterministically.

    python scripts/corpus/make_sample.py --corpus data/corpus --out examples/data

Only public-domain text goes in the sample (Austen, the Bible text, Moby-Dick), so it can be
committed with the repository; the Brown corpus and the Python manual stay fetch-only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# (source file, output file, document-id prefix, how many chapters)
SLICES = [
    ("austen.jsonl", "austen_pride_and_prejudice.txt", "austen/prideprejudice/", 16),
    ("web.jsonl", "web_genesis.txt", "web/Gen/", 25),
    ("mobydick.jsonl", "moby_dick.txt", "mobydick/", 8),
]


def make_sample(corpus: Path, out: Path) -> dict[str, tuple[int, int]]:
    """Write each slice as plain text (chapters in order, paragraphs separated by a blank line,
    as a Dataset source with `documentPer: paragraph` reads it); returns chapters and bytes."""
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for source, target, prefix, limit in SLICES:
        chapters = []
        with open(corpus / source, encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)
                if doc["id"].startswith(prefix):
                    chapters.append(doc["text"])
                    if len(chapters) == limit:
                        break
        text = "\n\n".join(chapters) + "\n"
        (out / target).write_text(text, encoding="utf-8")
        written[target] = (len(chapters), len(text.encode("utf-8")))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="output of fetch_corpus.py")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for name, (docs, size) in make_sample(args.corpus, args.out).items():
        print(f"{args.out / name}: {docs} chapters, {size / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
