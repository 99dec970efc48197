"""What a record reader reports to, and the counts per source that ``stats.json`` shows.

The WARC, MediaWiki and archive readers see records that are not documents (a request record,
a redirect page, a talk page) and documents they cannot use (a PDF, a page in no known charset).
They read through a :class:`RecordSink`: ``skip`` counts a record left out by design (never an
error), ``bad`` a malformed one (an error with ``onError: fail``), ``too_long`` one over
``maxDocumentBytes``. :class:`SourceCounts` is one source's tally: records by type, documents
kept and records skipped by reason; the read step's ``sources`` in ``stats.json``.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from llmfab.data.bounded_reading import TooLong


class Doc(NamedTuple):
    """A document as a reader yields it; ``url`` and ``meta`` (a JSON object) travel beside the text."""

    text: str
    id: str
    url: str | None = None
    meta: str | None = None


@dataclass
class SourceCounts:
    """One source: formats read, records by type (WARC record types, wiki pages, archive members),
    documents it gave and records skipped by reason."""

    formats: set[str] = field(default_factory=set)
    records: collections.Counter[str] = field(default_factory=collections.Counter)
    documents: int = 0
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    extraction_restarts: int = 0

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> SourceCounts:
        """The counts :meth:`stats` wrote (a build resuming in the middle of a source)."""
        return cls(set(stats["formats"]), collections.Counter(stats.get("records", {})), int(stats["documents"]),
                   collections.Counter(stats["skipped"]), int(stats.get("extractionRestarts", 0)))

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"formats": sorted(self.formats), "documents": self.documents,
                               "skipped": dict(sorted(self.skipped.items()))}
        if self.records:  # the readers that see records that are not documents count them by type
            out["records"] = dict(sorted(self.records.items()))
        if self.extraction_restarts:
            out["extractionRestarts"] = self.extraction_restarts
        return out


class RecordSink(Protocol):
    """Where a format reader reports records it does not turn into documents (see the module docstring)."""

    cap: int
    counts: SourceCounts
    converters: int  # child processes that convert records (HTML, wikitext) for this reader

    def skip(self, reason: str, where: str, text: str = "") -> None: ...

    def bad(self, where: str, what: str, fix: str, text: str = "", reason: str = "malformed_record") -> None: ...

    def too_long(self, where: str, what: str, size: int | TooLong) -> None: ...
