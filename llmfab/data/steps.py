"""The shape every pipeline step shares, datatrove-style.

A document step is a small object with one method, ``__call__(text) -> (text, reason)``: it
returns the (possibly rewritten) text and ``None`` to keep the document, or a short reason to drop
it. A step may also offer ``batch(texts)`` with the same result per text, when it is much faster
over many documents at once (language identification is). The runner, not the step, counts documents in and out per step and keeps a few examples per
removal reason, so every step is reported the same way in ``stats.json`` and the resource status.

Documents travel between steps as Arrow record batches with the columns of :data:`DOCUMENT_SCHEMA`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

DOCUMENT_SCHEMA = pa.schema([("text", pa.large_string()), ("source", pa.string()), ("id", pa.string())])
EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 240


class DocumentStep(Protocol):
    """One cleaning or filtering step over one document."""

    name: str

    def __call__(self, text: str) -> tuple[str, str | None]:
        """Return ``(text, None)`` to keep (text possibly rewritten) or ``(text, reason)`` to drop."""
        ...


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

    def drop(self, reason: str, ex: dict[str, str] | None = None, count: int = 1) -> None:
        self.removed[reason] = self.removed.get(reason, 0) + count
        if ex is not None:
            kept = self.examples.setdefault(reason, [])
            if len(kept) < EXAMPLES_PER_REASON:
                kept.append(ex)

    def status(self) -> dict[str, Any]:
        """camelCase dict matching ``llmfab.api.dataset.StepStats``."""
        return {"name": self.name, "documentsIn": self.documents_in, "documentsOut": self.documents_out,
                "removed": dict(sorted(self.removed.items()))}

    def stats(self) -> dict[str, Any]:
        out = {**self.status(), "examples": self.examples}
        if self.documents_edited:
            out.update(documentsEdited=self.documents_edited, charactersRemoved=self.characters_removed)
        return out


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

    def status(self) -> list[dict[str, Any]]:
        return [s.status() for s in self.steps.values()]

    def stats(self) -> list[dict[str, Any]]:
        return [s.stats() for s in self.steps.values()]
