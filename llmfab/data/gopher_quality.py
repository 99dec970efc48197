"""Gopher quality filter.

Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher",
appendix A.1.1 (MassiveText quality filters): keep documents with 50-100,000 words, mean word
length 3-10 characters, a symbol-to-word ratio (``#`` and ellipses) below 0.1, fewer than 90 % of
lines starting with a bullet, fewer than 30 % of lines ending in an ellipsis, at least 80 % of
words containing an alphabetic character, and at least two of the stop words "the, be, to, of,
and, that, have, with". The defaults of :class:`llmfab.api.dataset.GopherQuality` are those numbers.
"""

from __future__ import annotations

import re

from llmfab.api.dataset import GopherQuality

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("•", "‣", "⁃", "◦", "∙", "·", "-", "*", "–", "—", "●", "▪")
# Counting with one regular expression and C-level string methods over the whole text keeps the
# per-word work out of Python: tokens without a letter are rare, so they are the ones found.
NON_ALPHA_TOKEN = re.compile(r"(?<!\S)(?:[^\w\s]|[\d_])+(?!\S)")
PUNCTUATION = "".join(chr(c) for c in range(0x2000, 0x2070) if not chr(c).isspace()) + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~«»"
DELETE_PUNCTUATION = str.maketrans("", "", PUNCTUATION)
STOP_WORD = re.compile(r"(?<!\S)(?:" + "|".join(STOP_WORDS) + r")(?!\S)", re.IGNORECASE)


class GopherQualityFilter:
    name = "gopher_quality"

    def __init__(self, spec: GopherQuality) -> None:
        self.spec = spec

    def __call__(self, text: str) -> tuple[str, str | None]:
        s = self.spec
        words = text.split()
        tokens = len(words)
        non_alpha = NON_ALPHA_TOKEN.findall(text)
        n = tokens - sum(1 for t in non_alpha if not any(c.isalnum() for c in t))  # drop punctuation-only
        if n < s.min_words or n <= 0:
            return text, "too_few_words"
        if n > s.max_words:
            return text, "too_many_words"
        token_chars = sum(map(len, words))
        word_chars = len(text.translate(DELETE_PUNCTUATION)) - (len(text) - token_chars)
        mean_len = word_chars / n
        if mean_len < s.min_mean_word_length:
            return text, "mean_word_length_too_short"
        if mean_len > s.max_mean_word_length:
            return text, "mean_word_length_too_long"
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > s.max_symbol_word_ratio:
            return text, "symbol_word_ratio"
        lines = [ln.strip() for ln in text.split("\n")]
        lines = [ln for ln in lines if ln]
        if lines:
            bullets = sum(1 for ln in lines if ln.startswith(BULLETS))
            if bullets / len(lines) > s.max_bullet_lines_ratio:
                return text, "bullet_lines_ratio"
            ellipsis = sum(1 for ln in lines if ln.endswith(("...", "…")))
            if ellipsis / len(lines) > s.max_ellipsis_lines_ratio:
                return text, "ellipsis_lines_ratio"
        if (tokens - len(non_alpha)) / tokens < s.min_alpha_words_ratio:
            return text, "alphabetic_words_ratio"
        if s.min_stop_words:
            found = 0
            for _ in STOP_WORD.finditer(text):
                found += 1
                if found >= s.min_stop_words:
                    break
            if found < s.min_stop_words:
                return text, "too_few_stop_words"
        return text, None
