"""A few MB of real English for tokenizer tests: the committed sample (``examples/data``, three
whole books' openings, one document each) and WordNet 3.0's glosses (Debian ``wordnet-base``,
installed by ``make tools``), every k-th gloss in file order, a fixed number per document.

Generated text (:mod:`tests.data.corpus`) has a vocabulary of ~200 words, too few for a tokenizer
of 8k-32k pieces and for the near-ties between segmentations that real text has. The same files
give the same bytes on every machine with the same ``wordnet-base``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORDNET = Path("/usr/share/wordnet")
POS = ("noun", "verb", "adj", "adv")


def glosses(wordnet: Path = WORDNET) -> list[str]:
    """Every gloss (definition and examples) of WordNet's data files, in file order."""
    missing = [f"data.{p}" for p in POS if not (wordnet / f"data.{p}").is_file()]
    if missing:
        pytest.fail(f"WordNet is not installed at {wordnet} (missing {', '.join(missing)}): run `make tools` "
                    "(it installs the Debian package wordnet-base)")
    out = []
    for pos in POS:
        with open(wordnet / f"data.{pos}", encoding="utf-8") as lines:
            out += [line.split(" | ", 1)[1].strip() for line in lines if not line.startswith(" ") and " | " in line]
    return out


def write_real_text(out: Path, megabytes: float, glosses_per_document: int = 300) -> Path:
    """``out/*.txt`` (the sample books) and ``out/wordnet.jsonl`` (about ``megabytes`` of glosses)."""
    out.mkdir(parents=True, exist_ok=True)
    for book in sorted((ROOT / "examples" / "data").glob("*.txt")):
        shutil.copyfile(book, out / book.name)
    every = glosses()
    stride = max(1, round(sum(map(len, every)) / (megabytes * 1e6)))
    picked = [g[0].upper() + g[1:] + "." for g in every[::stride]]
    with open(out / "wordnet.jsonl", "w", encoding="utf-8") as f:
        for i in range(0, len(picked), glosses_per_document):
            f.write(json.dumps({"text": "\n".join(picked[i: i + glosses_per_document])}) + "\n")
    return out
