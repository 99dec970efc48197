"""Text normalisation: Unicode normal form, mojibake repair (ftfy), control characters, whitespace, and
boilerplate lines.

Each part is switchable in ``spec.normalize``. The common case is cheap: pure-ASCII text skips
ftfy and Unicode normalisation entirely (``str.isascii`` is a C check), and the rest are compiled
regular expressions, so no Python loop runs per character.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import ftfy

from llmfab.api.dataset import Normalize

# C0 and C1 controls except tab and newline (carriage returns are handled with line endings).
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
LINE_ENDINGS = re.compile(r"\r\n?|[\u2028\u2029\x85]")
INLINE_SPACE = re.compile(r"[^\S\n]+")
SPACE_AROUND_NEWLINE = re.compile(r" *\n *")
MANY_NEWLINES = re.compile(r"\n{3,}")
SINGLE_NEWLINE = re.compile(r"(?<=[^\n])\n(?=[^\n])")
# UTF-8 decoded as Latin-1/Windows-1252 leaves a lead byte (Â..ô) followed by a continuation byte
# (U+0080..U+00BF or its cp1252 spelling). Only text with such a pair goes through ftfy, whose
# full analysis costs ~5 ms per KB of non-ASCII text: the hint keeps normalisation at C speed.
MOJIBAKE_HINT = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
    "\u2013\u2014\u2018\u2019\u201a\u201c\u201d\u201e\u2020\u2021\u2022\u2026\u2030\u2039\u203a"
    "\u20ac\u2122]"
)


def line_key(line: str) -> bytes:
    """A short stable key of a stripped line (boilerplate counting across processes)."""
    return hashlib.blake2b(line.strip().encode(), digest_size=8).digest()


class Normalizer:
    """The ``normalize`` step: rewrites text; drops only documents left empty."""

    name = "normalize"

    def __init__(self, spec: Normalize, boilerplate: frozenset[bytes] = frozenset()) -> None:
        self.spec = spec
        self.form = None if spec.unicode == "none" else spec.unicode
        self.boilerplate = boilerplate if spec.remove_boilerplate_lines else frozenset()

    def __call__(self, text: str) -> tuple[str, str | None]:
        s = self.spec
        if not text.isascii():
            if s.fix_mojibake and MOJIBAKE_HINT.search(text):
                text = ftfy.fix_text(text, normalization=None, fix_line_breaks=False,
                                     remove_control_chars=False)
            if self.form:
                text = unicodedata.normalize(self.form, text)
        if s.normalize_whitespace:
            text = LINE_ENDINGS.sub("\n", text)
        if s.remove_control_chars:
            text = CONTROL_CHARS.sub("", text)
        if s.normalize_whitespace:
            text = INLINE_SPACE.sub(" ", text)
            text = SPACE_AROUND_NEWLINE.sub("\n", text)
            text = MANY_NEWLINES.sub("\n\n", text).strip()
        if s.unwrap_lines:
            text = SINGLE_NEWLINE.sub(" ", text)
        if self.boilerplate:
            lines = text.split("\n")
            kept = [ln for ln in lines if not ln.strip() or line_key(ln) not in self.boilerplate]
            if len(kept) != len(lines):
                text = MANY_NEWLINES.sub("\n\n", "\n".join(kept)).strip()
        if not text.strip():
            return text, "empty_after_normalization"
        return text, None


def document_line_keys(text: str, min_chars: int = 1) -> set[bytes]:
    """Distinct line keys of one document (each counts once per document for boilerplate)."""
    return {line_key(ln) for ln in text.split("\n") if len(ln.strip()) >= min_chars}
