"""The shape every pipeline step shares, datatrove-style.

A document step is a small object with one method, ``__call__(text) -> (text, reason)``: it
returns the (possibly rewritten) text and ``None`` to keep the document, or a short reason to drop
it. A step may also offer ``batch(texts)`` with the same result per text, when it is much faster
over many documents at once (language identification is). The runner, not the step, counts
documents in and out per step and keeps a few examples per removal reason, so every step is
reported the same way in ``stats.json`` and the resource status.

Documents travel between steps as Arrow record batches with the columns of :data:`DOCUMENT_SCHEMA`.
What a worker decided about a document travels back to the driver as a value, not as text to
parse: a :class:`Removal` (which step dropped it and why) and the :class:`Edit` s that shortened it,
carried in Arrow struct columns (:data:`REMOVAL_TYPE`, :data:`EDITS_TYPE`) because the Ray engine
moves only Arrow tables.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

# url and meta (a JSON object: a WARC record's date, a wiki page's title and ids) are null where a
# reader has none
DOCUMENT_SCHEMA = pa.schema([("text", pa.large_string()), ("source", pa.string()), ("id", pa.string()),
                             ("url", pa.string()), ("meta", pa.string())])
EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 240
REMOVAL_TYPE = pa.struct([("step", pa.string()), ("reason", pa.string())])
EDITS_TYPE = pa.list_(pa.struct([("step", pa.string()), ("characters", pa.int64())]))


class DocumentStep(Protocol):
    """One cleaning or filtering step over one document."""

    name: str

    def __call__(self, text: str) -> tuple[str, str | None]:
        """Return ``(text, None)`` to keep (text possibly rewritten) or ``(text, reason)`` to drop."""
        ...


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


def example(text: str, source: str = "", doc_id: str = "", note: str = "") -> dict[str, str]:
    """A short, JSON-friendly excerpt of a removed document for stats.json."""
    snippet = text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…"
    out = {"id": f"{source}:{doc_id}" if source else doc_id, "text": snippet}
    if note:
        out["note"] = note
    return out


@dataclass
class StepCounter:
    """Documents in/out of one step, removal reasons and a few examples of each."""

    name: str
    documents_in: int = 0
    documents_out: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    documents_edited: int = 0  # kept, but with lines removed (C4's line rules)
    characters_removed: int = 0
    details: dict[str, Any] = field(default_factory=dict)  # step-specific, stats.json only (the readers' sources)

    def drop(self, reason: str, ex: dict[str, str] | None = None, count: int = 1) -> None:
        self.removed[reason] = self.removed.get(reason, 0) + count
        if ex is not None:
            kept = self.examples.setdefault(reason, [])
            if len(kept) < EXAMPLES_PER_REASON:
                kept.append(ex)

    def edit(self, characters: int) -> None:
        self.documents_edited += 1
        self.characters_removed += characters

    def status(self) -> dict[str, Any]:
        """camelCase dict matching ``llmfab.api.dataset.StepStats``."""
        return {"name": self.name, "documentsIn": self.documents_in, "documentsOut": self.documents_out,
                "removed": dict(sorted(self.removed.items()))}

    def stats(self) -> dict[str, Any]:
        out = {**self.status(), "examples": self.examples}
        if self.documents_edited:
            out.update(documentsEdited=self.documents_edited, charactersRemoved=self.characters_removed)
        return {**out, **self.details}


class StepStatsBook:
    """Ordered collection of :class:`StepCounter` s, one per step, in pipeline order."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.steps: dict[str, StepCounter] = {}
        for n in names:
            self.step(n)

    def step(self, name: str) -> StepCounter:
        if name not in self.steps:
            self.steps[name] = StepCounter(name)
        return self.steps[name]

    def drop(self, removal: Removal, ex: dict[str, str] | None = None) -> None:
        self.step(removal.step).drop(removal.reason, ex)

    def edit(self, edit: Edit) -> None:
        self.step(edit.step).edit(edit.characters)

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
