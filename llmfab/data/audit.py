"""The audit trail: a capped, reproducible sample of the documents each step removed, per reason.

Counts say how much a filter removed; only the documents say whether it was right (datatrove
#220, #316 ask for exactly this). Each (step, reason) keeps the ``k`` removed documents with the
smallest hash of their source and id, a bottom-k sample: spread over the whole corpus rather than
its first files, the same on every run of the same input, and mergeable (the sample of a union is
the bottom-k of the samples), which is what lets a build that resumes from a checkpoint end with
the sample an uninterrupted build has. The artifact holds them as JSON Lines under ``removed/``,
one file per step and reason (:func:`write_removed`).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REMOVED_DIR = "removed"


def rank(label: str) -> int:
    """The sampling rank of a document: a 64-bit hash of its ``source:id`` label."""
    return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class RemovedDocument:
    """A removed document as the audit trail and ``stats.json``'s examples show it."""

    text: str
    source: str = ""
    id: str = ""
    note: str = ""
    url: str = ""

    @property
    def label(self) -> str:
        return f"{self.source}:{self.id}" if self.source else self.id

    def sort_key(self) -> tuple[int, str, str, str, str, str]:
        return (rank(self.label), self.source, self.id, self.text, self.note, self.url)


class RemovedSample:
    """The ``k`` removed documents of one reason with the smallest :func:`rank` (ties by content)."""

    def __init__(self, k: int, documents: list[RemovedDocument] | None = None) -> None:
        self.k = k
        self._keys: list[tuple[int, str, str, str, str, str]] = []
        self._docs: list[RemovedDocument] = []
        for doc in documents or ():
            self.offer(doc)

    def offer(self, doc: RemovedDocument) -> None:
        if self.k <= 0:
            return
        key = doc.sort_key()
        if len(self._keys) >= self.k and key >= self._keys[-1]:
            return  # the usual case once the sample is full: one hash, one comparison
        i = bisect.bisect_right(self._keys, key)
        self._keys.insert(i, key)
        self._docs.insert(i, doc)
        if len(self._keys) > self.k:
            self._keys.pop()
            self._docs.pop()

    def documents(self) -> list[RemovedDocument]:
        """The sample, smallest rank first."""
        return list(self._docs)

    def state(self) -> list[dict[str, str]]:
        return [asdict(d) for d in self._docs]

    @classmethod
    def from_state(cls, k: int, state: list[dict[str, str]]) -> RemovedSample:
        return cls(k, [RemovedDocument(**d) for d in state])


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def write_removed(out: Path, samples: dict[str, dict[str, RemovedSample]], removed: dict[str, dict[str, int]],
                  per_reason: int, max_characters: int) -> dict[str, Any]:
    """Write ``removed/<step>/<reason>.jsonl`` into ``out``; return ``stats.json``'s summary of it.

    ``samples`` and ``removed`` are per step, per reason: the sample and the number removed. A
    record holds the step, reason, source, id, URL (when the document had one), note, the text up
    to ``max_characters`` and the text's length in characters (``truncated`` says it was cut).
    """
    files: dict[str, dict[str, dict[str, Any]]] = {}
    for step, reasons in samples.items():
        for reason, sample in sorted(reasons.items()):
            docs = sample.documents()
            if not docs:
                continue
            path = Path(REMOVED_DIR) / _file_name(step) / f"{_file_name(reason)}.jsonl"
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps(_record(step, reason, d, max_characters), ensure_ascii=False, sort_keys=True)
                     for d in docs]
            (out / path).write_text("\n".join(lines) + "\n", encoding="utf-8")
            files.setdefault(step, {})[reason] = {"removed": removed.get(step, {}).get(reason, 0),
                                                  "sampled": len(docs), "file": str(path)}
    return {"directory": REMOVED_DIR, "samplesPerReason": per_reason, "maxCharacters": max_characters,
            "files": files}


def _record(step: str, reason: str, doc: RemovedDocument, max_characters: int) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step, "reason": reason, "source": doc.source, "id": doc.id,
                              "text": doc.text[:max_characters], "truncated": len(doc.text) > max_characters}
    if doc.url:
        record["url"] = doc.url
    if doc.note:
        record["note"] = doc.note
    return record
