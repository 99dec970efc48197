"""Gopher repetition filter.

Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher",
appendix A.1.1 and table A1: remove documents whose duplicate lines exceed 30 % of lines or 20 %
of characters, whose duplicate paragraphs exceed 30 % of paragraphs or 20 % of characters, whose
most frequent 2/3/4-gram covers more than 20/18/16 % of the characters, or whose repeated
5..10-grams cover more than 15/14/13/12/11/10 % of the characters.

N-grams are compared as integer keys in numpy (one ``np.unique`` per n), not as tuples of strings.
The word keys use Python's per-process ``hash``: only equality inside one document matters, so
the result does not depend on the process.
"""

from __future__ import annotations

import re

import numpy as np

from llmfab.api.dataset import GopherRepetition

PARAGRAPHS = re.compile(r"\n{2,}")


def _duplicate_fraction(parts: list[str]) -> tuple[float, float]:
    """(duplicate parts / parts, characters in duplicate parts / all characters)."""
    seen: set[str] = set()
    dup, dup_chars, chars = 0, 0, 0
    for p in parts:
        chars += len(p)
        if p in seen:
            dup += 1
            dup_chars += len(p)
        else:
            seen.add(p)
    return (dup / len(parts) if parts else 0.0), (dup_chars / chars if chars else 0.0)


class GopherRepetitionFilter:
    name = "gopher_repetition"

    def __init__(self, spec: GopherRepetition) -> None:
        self.spec = spec

    def __call__(self, text: str) -> tuple[str, str | None]:
        s = self.spec
        lines = [ln for ln in text.split("\n") if ln.strip()]
        frac, char_frac = _duplicate_fraction(lines)
        if frac > s.max_duplicate_line_fraction:
            return text, "duplicate_lines"
        if char_frac > s.max_duplicate_line_char_fraction:
            return text, "duplicate_line_characters"
        paragraphs = [p for p in PARAGRAPHS.split(text) if p.strip()]
        frac, char_frac = _duplicate_fraction(paragraphs)
        if frac > s.max_duplicate_paragraph_fraction:
            return text, "duplicate_paragraphs"
        if char_frac > s.max_duplicate_paragraph_char_fraction:
            return text, "duplicate_paragraph_characters"
        words = text.split()
        if len(words) < 2:
            return text, None
        ids = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        total = int(lengths.sum())
        cum = np.concatenate(([0], np.cumsum(lengths)))
        top = {t.n: t.max_ratio for t in s.top_ngrams}
        dup = {t.n: t.max_ratio for t in s.duplicate_ngrams}
        keys = ids
        repeats_possible = True
        for n in range(2, max([*top, *dup, 1]) + 1):
            if n > len(words) or not repeats_possible:
                break
            with np.errstate(over="ignore"):  # key of the n-gram starting at each position
                keys = keys[:-1] * np.uint64(0x100000001B3) + ids[n - 1:]
            order = np.argsort(keys, kind="stable")
            sk = keys[order]
            new = np.ones(len(sk), dtype=bool)
            new[1:] = sk[1:] != sk[:-1]
            repeated = np.ones(len(keys), dtype=bool)
            repeated[order[new]] = False  # first occurrence of each n-gram (stable sort)
            if not repeated.any():
                repeats_possible = False  # no repeated n-gram: no longer one repeats either
                continue
            if n in top:
                starts = np.flatnonzero(new)
                counts = np.diff(np.append(starts, len(sk)))
                # Ties go to the n-gram that occurs first, as ``Counter.most_common`` (Gopher's
                # reference code) breaks them: never to whichever the string hash sorts first.
                firsts = order[starts]
                tied = counts == counts.max()
                first = int(firsts[tied].min())
                chars = int(cum[first + n] - cum[first]) * int(counts.max())
                if chars / total > top[n]:
                    return text, f"top_{n}gram_ratio"
            if n in dup:
                cover = np.zeros(len(words) + 1, dtype=np.int64)
                starts = np.flatnonzero(repeated)
                np.add.at(cover, starts, 1)
                np.add.at(cover, starts + n, -1)
                covered = np.cumsum(cover[:-1]) > 0
                if int(lengths[covered].sum()) / total > dup[n]:
                    return text, f"duplicate_{n}gram_ratio"
        return text, None
