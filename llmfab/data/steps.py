"""The shape every pipeline step shares, datatrove-style.

A document step is a small object with one method, ``__call__(text) -> (text, reason)``: it
returns the (possibly rewritten) text and ``None`` to keep the document, or a short reason to drop
it. A step may also offer ``batch(texts)`` with the same result per text, when it is much faster
over many documents at once (language identification is). Two other shapes, as in datatrove: a
filter of the document's URL offers ``judge_url(url) -> (reason, note)`` instead, and a formatter
(PII) offers ``format(text) -> (text, counts)``; what they count on kept documents (``no_url``,
``email``) travels as a :class:`Tally`. The runner, not the step, counts documents in and out per
step and keeps a few examples per removal reason, and a sample for the audit trail
(:mod:`llmfab.data.audit`), so every step is reported the same way in ``stats.json`` and the
resource status.

Documents travel between steps as Arrow record batches with the columns of :data:`DOCUMENT_SCHEMA`.
What a worker decided about a document travels back to the driver as a value, not as text to
parse: a :class:`Removal` (which step dropped it and why) and the :class:`Edit` s that shortened it,
carried in Arrow struct columns (:data:`REMOVAL_TYPE`, :data:`EDITS_TYPE`, :data:`TALLIES_TYPE`)
because the Ray engine moves only Arrow tables. A build that resumes restores the counts from
:meth:`StepStatsBook.state`.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from llmfab.data.audit import RemovedDocument, RemovedSample

# url and meta (a JSON object: a WARC record's date, a wiki page's title and ids) are null where a
# reader has none
DOCUMENT_SCHEMA = pa.schema([("text", pa.large_string()), ("source", pa.string()), ("id", pa.string()),
                             ("url", pa.string()), ("meta", pa.string())])
EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 240
REMOVAL_TYPE = pa.struct([("step", pa.string()), ("reason", pa.string())])
EDITS_TYPE = pa.list_(pa.struct([("step", pa.string()), ("characters", pa.int64())]))
TALLIES_TYPE = pa.list_(pa.struct([("step", pa.string()), ("what", pa.string()), ("count", pa.int64())]))


class DocumentStep(Protocol):
    """One cleaning or filtering step over one document."""

    name: str

    def __call__(self, text: str) -> tuple[str, str | None]:
        """Return ``(text, None)`` to keep (text possibly rewritten) or ``(text, reason)`` to drop."""
        ...


@runtime_checkable
class UrlStep(Protocol):
    """A filter of the document's URL (None when the reader had none)."""

    name: str

    def judge_url(self, url: str | None) -> tuple[str | None, str | None]:
        """``(reason, None)`` to drop; ``(None, note)`` to keep, counting ``note`` unless it is None."""
        ...


@runtime_checkable
class Formatter(Protocol):
    """A step that rewrites and never drops (PII), counting what it rewrote."""

    name: str

    def format(self, text: str) -> tuple[str, dict[str, int]]:
        ...


AnyStep = DocumentStep | UrlStep | Formatter


@dataclass(frozen=True, slots=True)
class Removal:
    """A document dropped: by which step, for which of that step's reasons."""

    step: str
    reason: str


@dataclass(frozen=True, slots=True)
class Edit:
    """A document kept but shortened by a step (C4's line rules), by ``characters``."""

    step: str
    characters: int


@dataclass(frozen=True, slots=True)
class Tally:
    """Something a step counted on a document it kept: ``count`` PII replacements of kind ``what``
    (and ``documents``: 1), or why the URL filter let it through (``no_url``, ``allow_listed``)."""

    step: str
    what: str
    count: int = 1


def removals_to_arrow(removals: list[Removal | None]) -> pa.Array:
    """One :data:`REMOVAL_TYPE` value per document, null where the document was kept."""
    return pa.array([None if r is None else {"step": r.step, "reason": r.reason} for r in removals], REMOVAL_TYPE)


def removals_from_arrow(column: pa.ChunkedArray | pa.Array) -> list[Removal | None]:
    return [None if r is None else Removal(r["step"], r["reason"]) for r in column.to_pylist()]


def edits_to_arrow(edits: list[list[Edit]]) -> pa.Array:
    """One :data:`EDITS_TYPE` list per document, null where no step shortened it."""
    return pa.array([[{"step": e.step, "characters": e.characters} for e in row] or None for row in edits],
                    EDITS_TYPE)


def edits_from_arrow(column: pa.ChunkedArray | pa.Array) -> list[list[Edit]]:
    return [[Edit(e["step"], e["characters"]) for e in row or ()] for row in column.to_pylist()]


def tallies_to_arrow(tallies: list[list[Tally]]) -> pa.Array:
    """One :data:`TALLIES_TYPE` list per document, null where no step counted anything."""
    return pa.array([[{"step": t.step, "what": t.what, "count": t.count} for t in row] or None for row in tallies],
                    TALLIES_TYPE)


def tallies_from_arrow(column: pa.ChunkedArray | pa.Array) -> list[list[Tally]]:
    return [[Tally(t["step"], t["what"], t["count"]) for t in row or ()] for row in column.to_pylist()]


def example(text: str, source: str = "", doc_id: str = "", note: str = "", url: str | None = None
            ) -> RemovedDocument:
    """A removed document, for ``stats.json``'s examples and the audit trail."""
    return RemovedDocument(text, source, doc_id, note, url or "")


def _excerpt(doc: RemovedDocument) -> dict[str, str]:
    """A short, JSON-friendly excerpt of a removed document for stats.json."""
    snippet = doc.text if len(doc.text) <= EXAMPLE_CHARS else doc.text[:EXAMPLE_CHARS] + "…"
    out = {"id": doc.label, "text": snippet}
    if doc.note:
        out["note"] = doc.note
    return out


@dataclass
class StepCounter:
    """Documents in/out of one step, removal reasons, a few examples of each for ``stats.json``
    and a sample of up to ``sample_size`` for the audit trail."""

    name: str
    sample_size: int = 0
    documents_in: int = 0
    documents_out: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    samples: dict[str, RemovedSample] = field(default_factory=dict)
    documents_edited: int = 0  # kept, but with lines removed (C4's line rules)
    characters_removed: int = 0
    counted: dict[str, int] = field(default_factory=dict)  # see Tally
    details: dict[str, Any] = field(default_factory=dict)  # step-specific, stats.json only (the readers' sources)

    def drop(self, reason: str, doc: RemovedDocument | None = None, count: int = 1, sample: bool = True) -> None:
        """Count ``count`` documents removed for ``reason``; ``doc`` is one of them, an example for
        ``stats.json`` and (unless the caller samples itself, ``sample=False``) for the audit trail."""
        self.removed[reason] = self.removed.get(reason, 0) + count
        if doc is not None:
            kept = self.examples.setdefault(reason, [])
            if len(kept) < EXAMPLES_PER_REASON:
                kept.append(_excerpt(doc))
            if sample:
                self.sample(reason, doc)

    def sample(self, reason: str, doc: RemovedDocument) -> None:
        """Offer a removed document to the audit trail only (its count is kept elsewhere)."""
        if self.sample_size:
            self.samples.setdefault(reason, RemovedSample(self.sample_size)).offer(doc)

    def edit(self, characters: int) -> None:
        self.documents_edited += 1
        self.characters_removed += characters

    def count(self, what: str, n: int = 1) -> None:
        self.counted[what] = self.counted.get(what, 0) + n

    def status(self) -> dict[str, Any]:
        """camelCase dict matching ``llmfab.api.dataset.StepStats``."""
        out = {"name": self.name, "documentsIn": self.documents_in, "documentsOut": self.documents_out,
               "removed": dict(sorted(self.removed.items()))}
        if self.counted:
            out["counted"] = dict(sorted(self.counted.items()))
        return out

    def stats(self) -> dict[str, Any]:
        out = {**self.status(), "examples": self.examples}
        if self.documents_edited:
            out.update(documentsEdited=self.documents_edited, charactersRemoved=self.characters_removed)
        return {**out, **self.details}

    def state(self) -> dict[str, Any]:
        """Everything, for a checkpoint (:meth:`from_state` gives it back)."""
        return {"name": self.name, "sampleSize": self.sample_size, "documentsIn": self.documents_in,
                "documentsOut": self.documents_out, "removed": self.removed, "examples": self.examples,
                "samples": {r: s.state() for r, s in self.samples.items()},
                "documentsEdited": self.documents_edited, "charactersRemoved": self.characters_removed,
                "counted": self.counted, "details": copy.deepcopy(self.details)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StepCounter:
        k = state["sampleSize"]
        return cls(state["name"], k, state["documentsIn"], state["documentsOut"], dict(state["removed"]),
                   {r: list(e) for r, e in state["examples"].items()},
                   {r: RemovedSample.from_state(k, s) for r, s in state["samples"].items()},
                   state["documentsEdited"], state["charactersRemoved"], dict(state["counted"]),
                   copy.deepcopy(state.get("details", {})))


class StepStatsBook:
    """Ordered collection of :class:`StepCounter` s, one per step, in pipeline order; each keeps
    an audit sample of ``sample_size`` documents per reason."""

    def __init__(self, names: Iterable[str] = (), sample_size: int = 0) -> None:
        self.sample_size = sample_size
        self.steps: dict[str, StepCounter] = {}
        for n in names:
            self.step(n)

    def step(self, name: str) -> StepCounter:
        if name not in self.steps:
            self.steps[name] = StepCounter(name, self.sample_size)
        return self.steps[name]

    def drop(self, removal: Removal, doc: RemovedDocument | None = None) -> None:
        self.step(removal.step).drop(removal.reason, doc)

    def edit(self, edit: Edit) -> None:
        self.step(edit.step).edit(edit.characters)

    def tally(self, tally: Tally) -> None:
        self.step(tally.step).count(tally.what, tally.count)

    def samples(self) -> dict[str, dict[str, RemovedSample]]:
        """The audit samples, per step (pipeline order), per reason."""
        return {s.name: s.samples for s in self.steps.values() if s.samples}

    def removed(self) -> dict[str, dict[str, int]]:
        return {s.name: dict(s.removed) for s in self.steps.values()}

    def state(self) -> dict[str, Any]:
        return {"sampleSize": self.sample_size, "steps": [s.state() for s in self.steps.values()]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StepStatsBook:
        book = cls(sample_size=state["sampleSize"])
        for s in state["steps"]:
            book.steps[s["name"]] = StepCounter.from_state(s)
        return book

    def chain(self, names: Iterable[str], documents: int) -> None:
        """In/out of steps that report only their removals (the worker steps), one after another
        from ``documents`` entering the first."""
        for name in names:
            step = self.step(name)
            step.documents_in = documents
            documents -= sum(step.removed.values())
            step.documents_out = documents

    def removals(self) -> collections.Counter[Removal]:
        """Documents removed per (step, reason), in pipeline order."""
        return collections.Counter({Removal(s.name, r): c for s in self.steps.values() for r, c in s.removed.items()})

    def status(self) -> list[dict[str, Any]]:
        return [s.status() for s in self.steps.values()]

    def stats(self) -> list[dict[str, Any]]:
        return [s.stats() for s in self.steps.values()]
