"""C4 clean-up rules.

Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", section 2.2: keep only lines that end in terminal punctuation (``.``, ``!``, ``?``
or a closing quote) and have at least 3 words; drop lines mentioning "javascript" and lines of
cookie/terms/privacy-policy boilerplate; drop documents with fewer than 5 sentences (here: lines
terminators), containing "lorem ipsum" or a curly brace, or a word longer than 1000 characters. The line
rules rewrite the text; the document rules drop it.
"""

from __future__ import annotations

import re

from llmfab.api.dataset import C4Filter

TERMINAL = (".", "!", "?", '"', "”", "'", "’")
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
SENTENCE_END = re.compile(r"[.!?]+[\"'”’)]*(?=\s|$)")


class C4QualityFilter:
    name = "c4"

    def __init__(self, spec: C4Filter) -> None:
        self.spec = spec
        self.long_word = re.compile(r"\S{" + str(spec.max_word_length + 1) + ",}")

    def __call__(self, text: str) -> tuple[str, str | None]:
        s = self.spec
        low = text.lower()  # substring tests on lowercased text: far cheaper than IGNORECASE regexes
        if s.drop_lorem_ipsum and "lorem ipsum" in low:
            return text, "lorem_ipsum"
        if s.drop_curly_braces and ("{" in text or "}" in text):
            return text, "curly_braces"
        if self.long_word.search(text):
            return text, "word_too_long"
        # whole-text tests first: most documents have no such line, and then no line is tested
        check_js = s.remove_javascript_lines and "javascript" in low
        check_policy = s.remove_policy_lines and any(p in low for p in POLICY)
        kept: list[str] = []
        changed = False
        for line in text.split("\n"):
            stripped = line.strip()
            if not stripped:
                kept.append(line)
                continue
            lowered = stripped.lower() if check_js or check_policy else ""
            if (
                (s.require_terminal_punctuation and not stripped.endswith(TERMINAL))
                or len(stripped.split()) < s.min_words_per_line
                or (check_js and "javascript" in lowered)
                or (check_policy and any(p in lowered for p in POLICY))
            ):
                changed = True
                continue
            kept.append(line)
        if changed:
            text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
        if not text:
            return text, "no_lines_left"
        if s.min_sentences and len(SENTENCE_END.findall(text)) < s.min_sentences:
            return text, "too_few_sentences"
        return text, None
