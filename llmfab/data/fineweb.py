"""FineWeb quality filter.

Penedo et al. 2024, "The FineWeb Datasets: Decanting the Web for the Finest Text Data at Scale",
section 3.3 (custom heuristic filters): remove documents where fewer than 12 % of lines end in
punctuation, more than 10 % of the characters are in duplicated lines, or at least 67 % of the
lines are shorter than 30 characters.
"""

from __future__ import annotations

from llmfab.api.dataset import FineWebFilter

TERMINAL = (".", "!", "?", '"', "'", "”", "’", ")", ":", ";", "…", "。", "！", "？")


class FineWebQualityFilter:
    name = "fineweb"

    def __init__(self, spec: FineWebFilter) -> None:
        self.spec = spec

    def __call__(self, text: str) -> tuple[str, str | None]:
        s = self.spec
        lines = [ln.strip() for ln in text.split("\n")]
        lines = [ln for ln in lines if ln]
        if not lines:
            return text, "no_lines"
        punct = sum(1 for ln in lines if ln.endswith(TERMINAL))
        if punct / len(lines) < s.min_line_punctuation_ratio:
            return text, "line_punctuation_ratio"
        seen: set[str] = set()
        dup_chars = 0
        for ln in lines:
            if ln in seen:
                dup_chars += len(ln)
            else:
                seen.add(ln)
        total = sum(len(ln) for ln in lines)
        if dup_chars / total > s.max_duplicate_line_char_ratio:
            return text, "duplicate_line_characters"
        short = sum(1 for ln in lines if len(ln) < s.short_line_length)
        if short / len(lines) >= s.max_short_line_ratio:
            return text, "short_line_ratio"
        return text, None
