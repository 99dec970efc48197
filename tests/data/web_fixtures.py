"""Raw web text written by fixtures: Common Crawl-style WARC/WET files, a MediaWiki XML dump and an
OpenWebText-style tar of xz-compressed tars; nothing is downloaded.

The WARC pages are real HTML that Debian packages ship under ``/usr/share/doc`` (libxslt1-dev,
nodejs, valgrind, ... on this machine kind; ``make tools`` installs libxslt1-dev, whose 97 pages
alone are enough), served in records with the headers Common Crawl writes (``WARC-Target-URI``,
``WARC-Date``, ``WARC-Record-ID``, ``WARC-Payload-Digest``, ``WARC-Identified-Payload-Type``, an
HTTP status line and ``Content-Type``). Around them: request and metadata records, a PDF, an
image, a 404, a page whose only charset is a ``<meta>`` tag, pages re-encoded in Windows-1252,
KOI8-R and Shift_JIS with known words in them, bytes valid in no encoding, and a record whose
header is garbage. Each gzip member holds one record, as Common Crawl's files do.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import lzma
import re
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DOC = Path("/usr/share/doc")
# words that survive only if the page's charset was found: (encoding, HTML-declared name, sentence)
FOREIGN = (
    ("cp1252", "windows-1252", "Le café naïve du garçon à Zürich coûte cher, señor."),
    ("koi8_r", "koi8-r", "Съешь же ещё этих мягких французских булок, да выпей чаю."),
    ("shift_jis", "shift_jis", "日本語のページはシフトJISで書かれていることがあります。"),
)
WARC_DATE = "2016-09-01T12:{minute:02d}:{second:02d}Z"


def debian_pages(count: int, max_bytes: int = 150_000) -> list[Path]:
    """``count`` HTML files from /usr/share/doc, smallest package paths first (same set on every machine
    with the same packages); fails naming the fix when there are too few."""
    pages = sorted(p for p in DOC.rglob("*.html") if p.is_file() and 2_000 < p.stat().st_size <= max_bytes
                   and b"</p>" in p.read_bytes().lower())
    if len(pages) < count:
        pytest.fail(f"{DOC} has {len(pages)} HTML pages with paragraphs, fewer than {count}: run `make tools` "
                    "(it installs the Debian package libxslt1-dev, whose documentation is HTML)")
    step = len(pages) / count
    return [pages[int(i * step)] for i in range(count)]


def _digest(data: bytes) -> str:
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode()


def warc_record(kind: str, uri: str, block: bytes, index: int, extra: dict[str, str] | None = None,
                content_type: str = "application/http; msgtype=response") -> bytes:
    """One WARC/1.0 record, its header as Common Crawl writes it."""
    headers = {
        "WARC-Type": kind,
        "WARC-Date": WARC_DATE.format(minute=index // 60 % 60, second=index % 60),
        "WARC-Record-ID": f"<urn:uuid:{uuid.UUID(int=index + (1 << 64))}>",
        "Content-Length": str(len(block)),
        "Content-Type": content_type,
        "WARC-Warcinfo-ID": f"<urn:uuid:{uuid.UUID(int=1)}>",
        "WARC-Target-URI": uri,
        "WARC-Block-Digest": _digest(block),
        **(extra or {}),
    }
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items() if v) + "\r\n"
    return head.encode() + block + b"\r\n\r\n"


def http_response(body: bytes, content_type: str | None, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", "Server: nginx", "Date: Thu, 01 Sep 2016 12:00:00 GMT",
            f"Content-Length: {len(body)}", "Connection: close"]
    if content_type:
        head.insert(2, f"Content-Type: {content_type}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class WebCrawl:
    """What a fixture WARC holds, so tests can check what the reader made of it."""

    path: Path
    pages: dict[str, Path] = field(default_factory=dict)  # URL → the Debian page served there
    foreign: dict[str, str] = field(default_factory=dict)  # URL → a sentence in a non-UTF-8 charset
    non_html: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    bad_charset: list[str] = field(default_factory=list)
    broken: int = 0
    records: int = 0


def _with_sentence(html: bytes, sentence: str) -> str:
    """The page with ``sentence`` opening its longest paragraph (main content, whatever the layout)."""
    text = html.decode("utf-8", "replace")
    longest = max(re.finditer(r"<p\b[^>]*>(.*?)</p>", text, re.DOTALL | re.IGNORECASE), key=lambda m: len(m[1]))
    return text[:longest.start(1)] + sentence + " " + text[longest.start(1):]


def write_crawl(path: Path, count: int = 12, broken: bool = True) -> WebCrawl:
    """A ``.warc.gz`` of ``count`` Debian pages plus every awkward record listed in the module docstring."""
    crawl = WebCrawl(path)
    records: list[bytes] = []

    def add(kind: str, uri: str, block: bytes, **kw: object) -> None:
        records.append(warc_record(kind, uri, block, len(records) + 2, **kw))  # type: ignore[arg-type]

    info = b"software: llmfab-test-fixture\r\nformat: WARC File Format 1.0\r\n"
    records.append(warc_record("warcinfo", "", info, 1, content_type="application/warc-fields"))
    for i, page in enumerate(debian_pages(count)):
        uri = f"https://docs.example.org/{page.relative_to(DOC)}"
        body = page.read_bytes()
        declared: str | None = "text/html; charset=utf-8"
        if i < len(FOREIGN):  # re-encoded, the HTTP header naming the charset (or only <meta>, for one)
            encoding, label, sentence = FOREIGN[i]
            html = _with_sentence(body, sentence)
            html = html.replace("charset=", "data-old-charset=")
            html = html.replace("<head>", f'<head><meta charset="{label}">', 1) if "<head>" in html else html
            body = html.encode(encoding, "replace")
            declared = None if i == 1 else f"text/html; charset={label}"
            crawl.foreign[uri] = sentence
        add("request", uri, f"GET /{page.name} HTTP/1.1\r\nHost: docs.example.org\r\n\r\n".encode(),
            content_type="application/http; msgtype=request")
        add("response", uri, http_response(body, declared),
            extra={"WARC-Payload-Digest": _digest(body), "WARC-Identified-Payload-Type": "text/html",
                   "WARC-IP-Address": "192.0.2.7"})
        crawl.pages[uri] = page
        if i % 4 == 3:
            add("metadata", uri, b"fetchTimeMs: 118\r\n", content_type="application/warc-fields")
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    add("response", "https://docs.example.org/manual.pdf", http_response(pdf, "application/pdf"),
        extra={"WARC-Identified-Payload-Type": "application/pdf"})
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    add("response", "https://docs.example.org/logo.png", http_response(png, None))  # no types: sniffed
    crawl.non_html += ["https://docs.example.org/manual.pdf", "https://docs.example.org/logo.png"]
    missing = b"<html><body><h1>Not Found</h1><p>The page you asked for is not here.</p></body></html>"
    add("response", "https://docs.example.org/gone.html", http_response(missing, "text/html", "404 Not Found"),
        extra={"WARC-Identified-Payload-Type": "text/html"})
    crawl.not_found.append("https://docs.example.org/gone.html")
    invalid = b"<html><body><p>" + bytes([0x81, 0x8D, 0x8F, 0x90, 0x9D]) * 40 + b"</p></body></html>"
    add("response", "https://docs.example.org/garbled.html", http_response(invalid, "text/html; charset=utf-8"),
        extra={"WARC-Identified-Payload-Type": "text/html"})
    crawl.bad_charset.append("https://docs.example.org/garbled.html")
    if broken:  # a record whose header is not WARC at all, between two good ones
        records.insert(len(records) // 2, b"WARC/1.0\r\nthis is not a header line\r\nContent-Length: zz\r\n\r\n"
                       b"junk\r\n\r\n")
        crawl.broken = 1
    crawl.records = len(records)
    with open(path, "wb") as f:
        for record in records:
            f.write(gzip.compress(record, mtime=0))
    return crawl


def write_wet(path: Path, texts: dict[str, str]) -> Path:
    """A ``.wet.gz``: a warcinfo record, then one conversion record (UTF-8 text/plain) per URL."""
    with open(path, "wb") as f:
        f.write(gzip.compress(warc_record("warcinfo", "", b"software: test\r\n", 1,
                                          content_type="application/warc-fields"), mtime=0))
        for i, (uri, text) in enumerate(texts.items(), 2):
            f.write(gzip.compress(warc_record("conversion", uri, text.encode(), i, content_type="text/plain",
                                              extra={"WARC-Refers-To": f"<urn:uuid:{uuid.UUID(int=i)}>"}),
                                  mtime=0))
    return path


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """An uncompressed tar of ``members`` (name → bytes), fixed metadata so bytes repeat."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_openwebtext(path: Path, subsets: list[dict[str, str]]) -> Path:
    """OpenWebText's layout: ``openwebtext/urlsf_subsetNN-M_data.xz`` in a tar.xz, each an xz-compressed
    tar of ``.txt`` files, one document each."""
    inner = {f"openwebtext/urlsf_subset{n:02d}-1_data.xz":
             lzma.compress(tar_bytes({name: text.encode() for name, text in subset.items()}))
             for n, subset in enumerate(subsets)}
    path.write_bytes(lzma.compress(tar_bytes(inner)))
    return path


# --- MediaWiki export (schema 0.11, as dumps.wikimedia.org writes *-pages-articles.xml) ------------

WIKI_ARTICLES: dict[str, str] = {
    "Ada Lovelace": """{{Short description|English mathematician (1815–1852)}}
{{Use dmy dates|date=March 2024}}
{{Infobox person
| name        = Ada Lovelace
| image       = Ada Lovelace portrait.jpg
| birth_date  = {{birth date|df=yes|1815|12|10}}
| birth_place = [[London]], England
| known_for   = {{hlist|[[Analytical Engine]]|first computer program}}
}}
'''Augusta Ada King, Countess of Lovelace''' (''née'' '''Byron''') was an English [[mathematician]] and writer, \
chiefly known for her work on [[Charles Babbage]]'s proposed mechanical general-purpose computer, the \
[[Analytical Engine]].<ref name="Toole">{{cite book |last=Toole |first=Betty |title=Ada, the Enchantress of \
Numbers |year=1998 |publisher=Strawberry Press}}</ref> She was the first to recognise that the machine had \
applications beyond pure calculation.<ref>{{cite web |url=https://example.org/ada |title=Ada {{!}} notes}}</ref>

[[File:Ada Lovelace portrait.jpg|thumb|upright|Portrait of Lovelace by [[Alfred Edward Chalon]], about 1840]]

== Early life ==
Lovelace was the only legitimate child of the poet [[George Gordon Byron, 6th Baron Byron|Lord Byron]] and \
[[Anne Isabella Milbanke]]. Her mother encouraged her interest in [[mathematics]] and [[logic]] from an early age, \
hoping to keep her away from what she saw as her father's temperament.<ref name="Toole" />

=== Education ===
She was taught by private tutors, among them the mathematician [[Augustus De Morgan]], and she corresponded with \
scientists of her day. Her notes show a careful and curious mind at work.

== Work on the Analytical Engine ==
In 1843 Lovelace translated an article by the Italian engineer [[Luigi Federico Menabrea]] and added her own notes, \
which were longer than the article itself. Note G describes an [[algorithm]] for computing [[Bernoulli number]]s \
with the engine.{{sfn|Toole|1998|p=42}}

{| class="wikitable"
|+ Notes by length
|-
! Note !! Pages
|-
| A || 4
|-
| G || 7
|}

== References ==
{{Reflist}}

== External links ==
* {{Commons category-inline}}
* [https://example.org/lovelace The Ada Lovelace project]

{{Authority control}}
[[Category:1815 births]]
[[Category:English mathematicians]]
[[de:Ada Lovelace]]
""",
    "Analytical Engine": """{{Infobox machine |name=Analytical Engine |inventor=[[Charles Babbage]] |year={{circa|1837}}}}
The '''Analytical Engine''' was a proposed [[mechanical computer|mechanical general-purpose computer]] designed by \
the English mathematician [[Charles Babbage]]. It was first described in 1837 as the successor to Babbage's \
[[difference engine]].<ref>{{harvnb|Bromley|1982}}</ref> The design had an arithmetic unit, control flow in the \
form of conditional branching and loops, and integrated memory.

== Design ==
The machine was to be programmed with [[punched card]]s, an idea taken from the [[Jacquard machine|Jacquard loom]]. \
The store would hold one thousand numbers of forty decimal digits each, and the mill would carry out the four \
arithmetic operations on them.<!-- figures from the 1837 description -->

<gallery>
File:Analytical Engine model.jpg|A trial model
</gallery>

== Legacy ==
Although the engine was never built, historians regard its logical design as the first of a \
[[Turing completeness|Turing-complete]] machine. Parts of the mill were assembled by Babbage's son after his death.

== See also ==
{{Portal|Computing}}

[[Category:Mechanical computers]]
""",
    "Punched card": """{{About|the data medium|the voting method|Punched card ballot}}
A '''punched card''' is a piece of stiff paper that holds digital data represented by the presence or absence of \
holes in predefined positions.<ref group="note">Also called a punch card.</ref> Punched cards were widely used \
for data processing through much of the twentieth century.

== History ==
Early looms used chains of cards to control the pattern being woven, and the idea later spread to \
[[tabulating machine]]s built for the [[United States census]].<ref name=census/> Clerks could sort and count \
the cards far faster than they could read written returns.

* Cards were read by [[Electrical contact|electrical contacts]] passing through the holes.
* Later readers used light and [[photodiode]]s.

== Notes ==
{{notelist}}

== References ==
<references>
<ref name=census>{{cite journal |title=The census of 1890 |journal=Example Review |year=1990}}</ref>
</references>

[[Category:Storage media]]
""",
}
WIKI_SPECIAL = {  # title → (namespace, wikitext): pages the reader must leave out
    "Lovelace": ("0", "#REDIRECT [[Ada Lovelace]]\n\n{{Redirect category shell|{{R from surname}}}}"),
    "Engine (disambiguation)": ("0", "'''Engine''' may refer to:\n* [[Analytical Engine]]\n* [[Steam engine]]\n\n"
                                     "{{disambiguation}}"),
    "Babbage": ("0", "'''Babbage''' may refer to:\n* [[Charles Babbage]], mathematician\n"
                     "* [[Babbage (crater)]]\n{{Disambig|surname}}\n[[Category:Surnames]]"),
    "Talk:Ada Lovelace": ("1", "== Birth date ==\nIs the date right? ~~~~"),
    "Template:Infobox machine": ("10", "{| class=infobox\n|-\n| {{{name}}}\n|}<noinclude>{{Documentation}}</noinclude>"),
    "Category:Mechanical computers": ("14", "Computers that work by mechanical means.\n[[Category:Computers]]"),
    "File:Ada Lovelace portrait.jpg": ("6", "== Summary ==\n{{Information |description=Portrait}}"),
}
WIKI_REDIRECT_ELEMENT = "Countess of Lovelace"  # a redirect marked by <redirect> (its text is also #REDIRECT)


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def wiki_page_xml(title: str, ns: str, page_id: int, text: str, redirect: str | None = None) -> str:
    sha = hashlib.sha1(text.encode()).hexdigest()
    redirect_xml = f'    <redirect title="{_xml(redirect)}" />\n' if redirect else ""
    return (f"  <page>\n    <title>{_xml(title)}</title>\n    <ns>{ns}</ns>\n    <id>{page_id}</id>\n{redirect_xml}"
            f"    <revision>\n      <id>{page_id * 1000 + 7}</id>\n      <parentid>{page_id * 1000 + 3}</parentid>\n"
            f"      <timestamp>2024-03-0{page_id % 9 + 1}T12:00:00Z</timestamp>\n"
            f"      <contributor>\n        <username>Example</username>\n        <id>42</id>\n      </contributor>\n"
            f"      <comment>copyedit</comment>\n      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(text.encode())}" sha1="{sha}" xml:space="preserve">{_xml(text)}</text>\n'
            f"      <sha1>{sha}</sha1>\n    </revision>\n  </page>\n")


WIKI_HEADER = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" \
xsi:schemaLocation="http://www.mediawiki.org/xml/export-0.11/ http://www.mediawiki.org/xml/export-0.11.xsd" \
version="0.11" xml:lang="en">
  <siteinfo>
    <sitename>Wikipedia</sitename>
    <dbname>enwiki</dbname>
    <base>https://en.wikipedia.org/wiki/Main_Page</base>
    <generator>MediaWiki 1.42.0-wmf.20</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="0" case="first-letter" />
      <namespace key="1" case="first-letter">Talk</namespace>
      <namespace key="6" case="first-letter">File</namespace>
      <namespace key="10" case="first-letter">Template</namespace>
      <namespace key="14" case="first-letter">Category</namespace>
    </namespaces>
  </siteinfo>
"""


def write_wiki_dump(path: Path, articles: dict[str, str] | None = None, copies: int = 1) -> Path:
    """A ``*-pages-articles.xml`` (``.bz2`` by suffix): the articles ``copies`` times (retitled), the
    special pages, and a ``<redirect>`` page; page ids count up from 10."""
    import bz2

    articles = WIKI_ARTICLES if articles is None else articles
    opener = bz2.open if path.suffix == ".bz2" else open
    page_id = 10
    with opener(path, "wt", encoding="utf-8") as f:  # type: ignore[operator]
        f.write(WIKI_HEADER)
        for copy in range(copies):
            for title, text in articles.items():
                f.write(wiki_page_xml(title if copy == 0 else f"{title} {copy}", "0", page_id, text))
                page_id += 1
            if copy == 0:
                for title, (ns, text) in WIKI_SPECIAL.items():
                    f.write(wiki_page_xml(title, ns, page_id, text))
                    page_id += 1
                f.write(wiki_page_xml(WIKI_REDIRECT_ELEMENT, "0", page_id, "#REDIRECT [[Ada Lovelace]]",
                                      redirect="Ada Lovelace"))
                page_id += 1
        f.write("</mediawiki>\n")
    return path
