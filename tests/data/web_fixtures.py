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
