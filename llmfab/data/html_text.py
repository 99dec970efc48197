"""HTML pages to text: charset, then Resiliparse's main-content text (or trafilatura's).

:func:`page_text` bytes of an HTTP payload and the charset its headers name → ``(text, None)`` or
``("", reason)``. The charset is the HTTP header's if Python knows it, else the page's ``<meta
charset>``, else uchardet's guess (Resiliparse's ``detect_encoding``); bytes that do not decode
strictly in it are tried as UTF-8 and then Windows-1252 (the WHATWG fallback for Latin text), and
a page that decodes in none of them is ``bad_charset``. The text is Resiliparse's
``extract_plain_text`` with ``main_content=True``, as DCLM extracts Common Crawl, or trafilatura's
``extract`` with ``favor_precision`` as datatrove calls it (``html.extractor``). The WARC reader
runs it in a child process with a time bound per page (:mod:`llmfab.data.isolated`):
Resiliparse's main-content pass is quadratic in a page's nesting depth (10,000 nested ``div`` s,
110 KB of HTML, take ~7 s; 100,000 take over ten minutes), and no thread can stop C code.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

FALLBACK_ENCODINGS = ("utf-8", "cp1252")


def _codec(name: str | None) -> str | None:
    """Python's name for a charset label, None if Python has no such codec."""
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except (LookupError, ValueError):
        return None


def decode_page(payload: bytes, charset: str | None) -> tuple[str, str] | None:
    """``(text, encoding used)``, or None when no candidate encoding decodes the bytes strictly."""
    from resiliparse.parse.encoding import detect_encoding

    first = _codec(charset) or _codec(detect_encoding(payload, from_html_meta=True))
    tried = [first] if first else []
    for candidate in (*tried, *FALLBACK_ENCODINGS):
        try:
            text = payload.decode(candidate)
        except (UnicodeDecodeError, LookupError):
            continue
        return text.removeprefix("\ufeff"), candidate
    return None


def page_text(payload: bytes, charset: str | None, main_content: bool = True,
              extractor: str = "resiliparse") -> tuple[str, str | None]:
    """An HTML page's text: ``(text, None)``, or ``("", reason)`` (``bad_charset``, ``empty_text``)."""
    decoded = decode_page(payload, charset)
    if decoded is None:
        return "", "bad_charset"
    if extractor == "trafilatura":
        # datatrove's settings but deduplicate=False: trafilatura's duplicate cache lives in the
        # process, so a restarted child would give other text
        import trafilatura

        text = (trafilatura.extract(decoded[0], favor_precision=main_content, favor_recall=not main_content,
                                    include_comments=False, deduplicate=False) or "").strip()
    else:
        from resiliparse.extract.html2text import extract_plain_text

        text = extract_plain_text(decoded[0], main_content=main_content, alt_texts=False).strip()
    return (text, None) if text else ("", "empty_text")


def make_task(main_content: str, extractor: str) -> Callable[[bytes, str | None], tuple[str, str | None]]:
    """The child's function (:mod:`llmfab.data.isolated`): options arrive as strings."""
    keep_main = main_content == "1"

    def task(payload: bytes, charset: str | None) -> tuple[str, str | None]:
        return page_text(payload, charset, keep_main, extractor)

    task(b"<p>warm</p>", "utf-8")  # imports and first use before the first deadline
    return task
