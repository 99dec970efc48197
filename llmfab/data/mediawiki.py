"""MediaWiki XML dumps (``*-pages-articles*.xml[.bz2]``) → one plain-text document per article.

The dump is parsed as a stream with expat, a chunk at a time: memory holds one page, and a page's
text is kept only while it is within ``maxDocumentBytes`` (the ``<text bytes=...>`` attribute
refuses a longer one before it is read). Kept: pages in namespace 0 (articles) that are not
redirects (a ``<redirect>`` element or ``#REDIRECT`` text) nor disambiguation pages. A page is a
disambiguation page when its wikitext has the ``__DISAMBIG__`` magic word or calls one of the
templates that emit it on the English Wikipedia (``{{Disambiguation}}`` and its aliases and
variants: ``{{Dab}}``, ``{{Disambig}}``, ``{{Hndis}}``, ``{{Geodis}}``, ... see
:data:`DISAMBIGUATION_TEMPLATES`), or its title ends in ``(disambiguation)``; other wikis name
these templates in their own language, so their disambiguation pages are caught only by the
magic word or title.

Wikitext becomes text with mwparserfromhell's parse tree: templates (and so infoboxes and
navboxes, nested ones with them), references, tables, comments, files, images and categories are
dropped, and so are interlanguage links and bold/italic quotes; a link becomes its shown text; a section title becomes a line of its own (dropped when
nothing of its section is left, as with "References"). The conversion runs in a child process
(:mod:`llmfab.data.isolated`) while this one parses the XML, and a page that takes longer than
:data:`CONVERSION_SECONDS` is skipped (``conversion_timeout``). Each document: id = the page id,
url = the wiki's base URL + title, meta = ``{"title", "pageId", "revisionId", "timestamp"}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import quote
from xml.parsers import expat

from llmfab.data.isolated import IsolatedConverter
from llmfab.data.record_sink import Doc, RecordSink

CHUNK_BYTES = 1 << 20
CONVERSION_SECONDS = 30.0  # longest one page's wikitext may take to become text (conversion_timeout)
DISAMBIGUATION_TEMPLATES = frozenset((
    "disambiguation", "disambig", "disamb", "dab", "disambiguation page", "hndis", "human name disambiguation",
    "geodis", "geographic disambiguation", "school disambiguation", "hospital disambiguation",
    "mathematical disambiguation", "mathdab", "number disambiguation", "numberdis",
    "letter-number combination disambiguation", "lnd", "species latin name disambiguation",
    "genus disambiguation", "call sign disambiguation", "road disambiguation", "church disambiguation",
    "airport disambiguation", "place name disambiguation", "disambiguation cleanup", "dab cleanup",
))
# a template call's name: {{Name|...}} or {{Name}}
TEMPLATE_NAME = re.compile(r"\{\{\s*([^{}|\n]+?)\s*(?:\||\}\})")
REDIRECT = re.compile(r"^\s*#\s*redirect", re.IGNORECASE)
MAGIC_WORD = re.compile(r"__[A-Z]+__")
BOLD_ITALIC = re.compile(r"'{2,5}")  # bold and italic quotes: left as text (skip_style_tags), dropped here
# [[de:Ada Lovelace]]: a link to the same article in another language's wiki
INTERLANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*")
DROPPED_NAMESPACES = frozenset({"file", "image", "media", "category"})
DROPPED_TAGS = frozenset({"ref", "references", "table", "gallery", "math", "chem", "ce", "timeline", "score",
                          "graph", "imagemap", "inputbox", "templatedata", "templatestyles", "categorytree",
                          "mapframe", "maplink", "syntaxhighlight", "source", "hiero", "indicator"})
HEADING = "\x00"  # marks a section title line until empty sections are dropped
BLANK_RUNS = re.compile(r"\n{3,}")
SPACE_RUNS = re.compile(r"[ \t]{2,}")


def is_disambiguation(title: str, wikitext: str) -> bool:
    if title.rstrip().endswith("(disambiguation)") or "__DISAMBIG__" in wikitext:
        return True
    return any(_template_key(m.group(1)) in DISAMBIGUATION_TEMPLATES for m in TEMPLATE_NAME.finditer(wikitext))


def _template_key(name: str) -> str:
    return name.replace("_", " ").strip().lower().removeprefix("template:").strip()


def wikitext_to_text(wikitext: str) -> str:
    """Plain text of an article (see the module docstring for what is kept)."""
    import mwparserfromhell

    rendered = _render(mwparserfromhell.parse(wikitext, skip_style_tags=True))
    rendered = BOLD_ITALIC.sub("", MAGIC_WORD.sub("", rendered))
    lines = [SPACE_RUNS.sub(" ", line).strip() for line in rendered.split("\n")]
    kept: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith(HEADING):
            follows = next((x for x in lines[i + 1:] if x), HEADING)  # the section's first non-empty line
            if not follows.startswith(HEADING):
                kept.append(line[1:].strip())
            continue
        kept.append(line)
    return BLANK_RUNS.sub("\n\n", "\n".join(kept)).strip()


def _render(code: Any) -> str:
    from mwparserfromhell import nodes

    out: list[str] = []
    for node in code.nodes:
        if isinstance(node, nodes.Text):
            out.append(node.value)
        elif isinstance(node, nodes.Wikilink):
            title = str(node.title).strip()
            prefix = title.split(":", 1)[0].strip() if ":" in title else ""
            if not title.startswith(":") and (prefix.lower() in DROPPED_NAMESPACES or
                                              (node.text is None and INTERLANGUAGE.fullmatch(prefix))):
                continue
            out.append(_render(node.text) if node.text is not None else title.lstrip(":"))
        elif isinstance(node, nodes.ExternalLink):
            out.append(_render(node.title) if node.title is not None and node.brackets else "")
        elif isinstance(node, nodes.Heading):
            out.append(f"\n{HEADING}{_render(node.title).strip()}\n")
        elif isinstance(node, nodes.HTMLEntity):
            out.append(node.normalize())
        elif isinstance(node, nodes.Tag):
            tag = str(node.tag).strip().lower()
            if tag in DROPPED_TAGS:
                continue
            if tag == "br":
                out.append("\n")
            elif node.contents is not None and not node.self_closing:
                out.append(_render(node.contents))
        # Template, Argument, Comment and anything else: dropped
    return "".join(out)


class NotADump(ValueError):
    """An XML file that is not a MediaWiki export."""


@dataclass
class _Page:
    title: str = ""
    ns: str = ""
    page_id: str = ""
    revision_id: str = ""
    timestamp: str = ""
    redirect: bool = False
    text: list[str] = field(default_factory=list)
    text_size: int = 0  # characters seen, kept or not
    too_long: bool = False


class _DumpParser:
    """expat handlers that turn ``<page>`` elements into :class:`_Page` s (see the module docstring)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parser = expat.ParserCreate()
        self.parser.buffer_text = True
        self.parser.buffer_size = 1 << 16
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.parser.CharacterDataHandler = self._data
        self.path: list[str] = []
        self.page: _Page | None = None
        self.chars: list[str] | None = None  # collecting a small field
        self.in_text = False
        self.done: list[_Page] = []
        self.base = ""
        self.root_seen = False

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        if not self.root_seen:
            self.root_seen = True
            if name != "mediawiki":
                raise NotADump(f"its root element is <{name}>, not <mediawiki>: not a MediaWiki XML dump")
        parent = self.path[-1] if self.path else ""
        self.path.append(name)
        if name == "page":
            self.page = _Page()
        elif self.page is None:
            if name == "base" and parent == "siteinfo":
                self.chars = []
        elif name == "redirect" and parent == "page":
            self.page.redirect = True
        elif name == "text" and parent == "revision":
            self.page.text, self.page.text_size, self.in_text = [], 0, True
            self.page.too_long = int(attrs.get("bytes") or 0) > self.cap
        elif (parent == "page" and name in ("title", "ns", "id")) or (parent == "revision" and name in
                                                                     ("id", "timestamp")):
            self.chars = []

    def _end(self, name: str) -> None:
        self.path.pop()
        parent = self.path[-1] if self.path else ""
        if name == "text":
            self.in_text = False
            return
        if name == "page":
            if self.page is not None:
                self.done.append(self.page)
            self.page = None
            return
        if self.chars is None:
            return
        value, self.chars = "".join(self.chars).strip(), None
        page = self.page
        if page is None:
            if name == "base":
                self.base = value
        elif name in ("title", "ns", "timestamp"):
            setattr(page, name, value)
        elif name == "id":
            if parent == "page":
                page.page_id = value
            else:
                page.revision_id = value

    def _data(self, data: str) -> None:
        if self.in_text and self.page is not None:
            page = self.page
            page.text_size += len(data)
            if page.text_size > self.cap:  # characters ≤ bytes: past the cap it is too long whatever the encoding
                page.too_long, page.text = True, []
            elif not page.too_long:
                page.text.append(data)
        elif self.chars is not None:
            self.chars.append(data)

    def feed(self, stream: IO[bytes]) -> Iterator[_Page]:
        while block := stream.read(CHUNK_BYTES):
            self.parser.Parse(block, False)
            yield from self.done
            self.done.clear()
        self.parser.Parse(b"", True)
        yield from self.done
        self.done.clear()


def page_url(base: str, title: str) -> str | None:
    """``https://en.wikipedia.org/wiki/Main_Page`` + ``Ada Lovelace`` → ``.../wiki/Ada_Lovelace``."""
    if "/" not in base:
        return None
    return base.rsplit("/", 1)[0] + "/" + quote(title.replace(" ", "_"), safe="/:(),'!*@$;")


def make_task() -> Callable[[bytes, str | None], tuple[str, str | None]]:
    """The child's function (:mod:`llmfab.data.isolated`): UTF-8 wikitext → ``(text, reason)``."""

    def task(payload: bytes, _: str | None) -> tuple[str, str | None]:
        text = wikitext_to_text(payload.decode("utf-8", "surrogatepass"))
        return (text, None) if text else ("", "empty_text")

    task(b"a [[b]] {{c}}", None)  # imports and first use before the first deadline
    return task


@dataclass(frozen=True, slots=True)
class _Article:
    page: _Page
    where: str


def mediawiki_documents(stream: IO[bytes], name: str, sink: RecordSink) -> Iterator[Doc]:
    """Articles of one dump stream (see the module docstring); ``expat.ExpatError`` on broken XML."""
    parser = _DumpParser(sink.cap)
    with IsolatedConverter("llmfab.data.mediawiki:make_task", [], CONVERSION_SECONDS, reason="conversion",
                           workers=sink.converters) as child:
        try:
            for article, text, reason in child.convert(_articles(parser, stream, name, sink)):
                page = article.page
                if reason is not None:
                    sink.skip(reason, article.where, page.title)
                    continue
                meta = {"title": page.title, "pageId": page.page_id, "revisionId": page.revision_id,
                        "timestamp": page.timestamp}
                url = page_url(parser.base, page.title) if parser.base else None
                yield Doc(text, page.page_id or article.where, url, json.dumps(meta, ensure_ascii=False))
        finally:
            sink.counts.extraction_restarts += child.restarts


def _articles(parser: _DumpParser, stream: IO[bytes], name: str, sink: RecordSink
              ) -> Iterator[tuple[_Article, bytes, None]]:
    """``(article, its wikitext as UTF-8, None)`` for each page that is an article; the rest counted."""
    for page in parser.feed(stream):
        sink.counts.records["page"] += 1
        where = f"{name}: page {page.page_id} {page.title!r}"
        if page.ns != "0":
            sink.skip("other_namespace", where, page.title)
            continue
        if page.redirect:
            sink.skip("redirect", where, page.title)
            continue
        if page.too_long:
            sink.too_long(where, "the page's wikitext", max(page.text_size, sink.cap + 1))
            continue
        wikitext = "".join(page.text)
        payload = wikitext.encode("utf-8", "surrogatepass")
        if len(payload) > sink.cap:
            sink.too_long(where, "the page's wikitext", len(payload))
            continue
        if REDIRECT.match(wikitext):
            sink.skip("redirect", where, page.title)
            continue
        if is_disambiguation(page.title, wikitext):
            sink.skip("disambiguation", where, page.title)
            continue
        page.text = []  # the payload holds it now
        yield _Article(page, where), payload, None
