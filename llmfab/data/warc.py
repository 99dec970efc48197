"""WARC and WET files (Common Crawl, CC-News) → documents with their URL and date.

Parsed with FastWARC (``quirks_mode``, so a record with a garbage header is one ``broken_record``
and reading goes on at the next). A ``response`` record is a page when its HTTP status is 2xx
and its payload is HTML: by ``WARC-Identified-Payload-Type`` (Common Crawl's detected type), else
the HTTP ``Content-Type``, else sniffed from its first bytes as the WHATWG MIME Sniffing standard
sniffs HTML (a leading ``<!DOCTYPE HTML``, ``<html``, ``<p``, ... tag). Pages become text in
:func:`llmfab.data.html_text.page_text` (charset, Resiliparse) in an
:class:`~llmfab.data.isolated.IsolatedConverter` (a child process, a time bound per page); a
WET ``conversion`` record's UTF-8 text is used as it is. Other record types (``warcinfo``,
``request``, ``metadata``, ``revisit``) are counted by type only.

Each document: id = ``WARC-Record-ID``, url = ``WARC-Target-URI``, meta = ``{"date": WARC-Date}``.
A payload longer than ``maxDocumentBytes`` is ``too_long`` without being read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from llmfab.api.dataset import HtmlExtraction
from llmfab.data.isolated import IsolatedConverter
from llmfab.data.record_sink import Doc, RecordSink

HTML_TYPES = {"text/html", "application/xhtml+xml"}
# a Content-Type that says nothing about the bytes: sniff them instead
UNINFORMATIVE_TYPES = {"", "application/octet-stream", "application/unknown", "unknown/unknown", "*/*"}
# WHATWG MIME Sniffing, "rules for identifying an unknown MIME type": HTML when the first tag is one of
# these, followed by a space or ">"
HTML_SNIFF_TAGS = (b"<!doctype html", b"<html", b"<head", b"<script", b"<iframe", b"<h1", b"<div", b"<font",
                   b"<table", b"<a", b"<style", b"<title", b"<b", b"<body", b"<br", b"<p", b"<!--")
WHITESPACE = b" \t\n\x0c\r"


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def sniffs_as_html(payload: bytes) -> bool:
    head = payload[:1024].removeprefix(b"\xef\xbb\xbf").lstrip(WHITESPACE).lower()
    for tag in HTML_SNIFF_TAGS:
        if head.startswith(tag) and (tag == b"<!--" or head[len(tag): len(tag) + 1] in (b" ", b">")):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Page:
    record_id: str
    url: str | None
    date: str | None
    where: str

    def doc(self, text: str) -> Doc:
        return Doc(text, self.record_id, self.url, json.dumps({"date": self.date}) if self.date else None)


def warc_documents(stream: IO[bytes], name: str, sink: RecordSink, html: HtmlExtraction) -> Iterator[Doc]:
    """Documents of one WARC/WET stream, in record order (see the module docstring)."""
    options = [str(int(html.main_content)), html.extractor]
    with IsolatedConverter("llmfab.data.html_text:make_task", options, html.timeout_seconds,
                           workers=sink.converters) as extractor:
        try:
            for page, text, reason in extractor.convert(_pages(stream, name, sink)):
                if reason is not None:
                    sink.skip(reason, page.where, page.url or "")
                    continue
                yield page.doc(text)
        finally:
            sink.counts.extraction_restarts += extractor.restarts


def _pages(stream: IO[bytes], name: str, sink: RecordSink) -> Iterator[tuple[_Page, bytes | None, str | None]]:
    """``(page, payload, charset)`` for HTML pages and ``(page, None, text)`` for WET text records."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    cap = sink.cap
    for record in ArchiveIterator(stream, parse_http=True, quirks_mode=True, fsspec_args=False):
        kind = record.record_type
        headers = record.headers
        where = f"{name}@{record.stream_pos}"
        if str(kind) == "unknown" and not headers.get("WARC-Type"):  # quirks mode's stand-in for garbage
            sink.counts.records["broken"] += 1
            sink.bad(where, "a WARC record whose header cannot be parsed", "fix or drop the record",
                     reason="broken_record")
            continue
        sink.counts.records[str(kind)] += 1
        if kind not in (WarcRecordType.response, WarcRecordType.conversion):
            continue
        url = headers.get("WARC-Target-URI")
        page = _Page(headers.get("WARC-Record-ID") or where, url, headers.get("WARC-Date"), f"{where} {url or ''}")
        if kind == WarcRecordType.response:
            if not record.is_http:
                sink.skip("not_http", page.where, url or "")
                continue
            status = record.http_headers.status_code
            if not 200 <= (status or 0) < 300:
                sink.skip("http_status", page.where, f"{status} {url or ''}")
                continue
        if record.content_length > cap:
            sink.too_long(page.where, "the record's payload", record.content_length)
            continue
        payload = record.reader.read(cap + 1)
        if len(payload) > cap:
            sink.too_long(page.where, "the record's payload", len(payload))
            continue
        if kind == WarcRecordType.conversion:
            text = payload.decode("utf-8", "replace").strip()  # WET is UTF-8 by definition
            if not text:
                sink.skip("empty_text", page.where, url or "")
                continue
            yield page, None, text
            continue
        declared = media_type(headers.get("WARC-Identified-Payload-Type"))
        if not declared:
            declared = media_type(record.http_content_type)
            if declared in UNINFORMATIVE_TYPES:
                declared = "text/html" if sniffs_as_html(payload) else "unknown"
        if declared not in HTML_TYPES:
            sink.skip("non_html", page.where, f"{declared} {url or ''}")
            continue
        yield page, payload, record.http_charset
