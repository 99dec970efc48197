"""The per-batch half of the pipeline that runs in workers: normalise, filter, hash, sketch.

:class:`CleanBatch` is the function the engine maps over record batches of documents. It runs
the per-document steps of :data:`llmfab.data.registry.STEPS` in order (the first that drops a
document is its :class:`~llmfab.data.steps.Removal`; a URL step reads the optional ``url``
column, a formatter reports :class:`~llmfab.data.steps.Tally` s), then, for the survivors, the
batch-vectorised parts: exact-dedup key, outlier statistics, MinHash band keys and shingle sets.
Dedup decisions themselves need the whole corpus and are made by the driver
(:mod:`llmfab.data.passes.clean`), which sees the results in input order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from llmfab.api.dataset import DatasetSpec
from llmfab.data.exact_dedup import document_key
from llmfab.data.near_dedup import MinHasher
from llmfab.data.normalize import Normalizer, document_line_keys
from llmfab.data.outliers import document_stats
from llmfab.data.registry import StepDefinition, document_steps
from llmfab.data.steps import (
    EDITS_TYPE,
    EXAMPLE_CHARS,
    REMOVAL_TYPE,
    TALLIES_TYPE,
    AnyStep,
    Edit,
    Formatter,
    Removal,
    Tally,
    UrlStep,
    edits_to_arrow,
    removals_to_arrow,
    tallies_to_arrow,
)

CLEAN_SCHEMA = pa.schema([
    ("text", pa.large_string()), ("source", pa.string()), ("id", pa.string()), ("url", pa.string()),
    ("removal", REMOVAL_TYPE), ("edits", EDITS_TYPE), ("tallies", TALLIES_TYPE), ("key", pa.binary(16)),
    ("stats", pa.list_(pa.float64())), ("bands", pa.list_(pa.uint64())), ("shingles", pa.large_list(pa.uint64())),
])


class CleanBatch:
    """Worker function: documents batch → :data:`CLEAN_SCHEMA` table, one row per input document.

    A removed document comes back with the start of its text as read (enough for the audit
    trail's ``maxCharacters``), a kept one with its cleaned text."""

    def __init__(self, spec: DatasetSpec, boilerplate: frozenset[bytes] = frozenset()) -> None:
        self.spec = spec
        self.boilerplate = boilerplate
        self._steps: list[tuple[StepDefinition, AnyStep]] | None = None
        self._hasher: MinHasher | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "boilerplate": self.boilerplate, "_steps": None, "_hasher": None}

    def __call__(self, batch: pa.Table | pa.RecordBatch) -> pa.Table:
        if self._steps is None:
            self._steps = document_steps(self.spec, self.boilerplate)
            if self.spec.dedup.near.enabled:
                self._hasher = MinHasher(self.spec.dedup.near)
        originals = [t or "" for t in batch.column("text").to_pylist()]
        urls = (batch.column("url").cast(pa.string()) if "url" in batch.schema.names
                else pa.nulls(len(originals), pa.string()))
        url_list: list[str | None] = urls.to_pylist()
        texts = list(originals)
        removals: list[Removal | None] = [None] * len(texts)
        edits: list[list[Edit]] = [[] for _ in texts]
        tallies: list[list[Tally]] = [[] for _ in texts]
        alive = list(range(len(texts)))
        for definition, step in self._steps:  # step by step over the batch, so a step can vectorise (language)
            name = definition.name
            survivors = []
            if isinstance(step, UrlStep):  # reads the URL, not the text
                for i in alive:
                    why, note = step.judge_url(url_list[i])
                    if why is not None:
                        removals[i] = Removal(name, why)
                        continue
                    if note is not None:
                        tallies[i].append(Tally(name, note))
                    survivors.append(i)
                alive = survivors
                continue
            if isinstance(step, Formatter):  # rewrites, never drops, and counts what it rewrote
                for i in alive:
                    texts[i], counts = step.format(texts[i])
                    tallies[i] += [Tally(name, what, n) for what, n in counts.items()]
                continue
            batch_fn = getattr(step, "batch", None)
            if batch_fn is not None:
                results = batch_fn([texts[i] for i in alive])
            else:
                results = [step(texts[i]) for i in alive]
            for i, (text, why) in zip(alive, results, strict=True):
                if why is None:
                    if len(text) != len(texts[i]) and definition.reports_edits:  # lines removed (C4)
                        edits[i].append(Edit(name, len(texts[i]) - len(text)))
                    texts[i] = text
                    survivors.append(i)
                else:
                    removals[i] = Removal(name, why)
            alive = survivors
        keep_chars = max(EXAMPLE_CHARS, self.spec.audit.max_characters) + 1  # one more: "was it cut?"
        out_text = [t if r is None else o[:keep_chars] for t, o, r in zip(texts, originals, removals, strict=True)]
        kept = [i for i, r in enumerate(removals) if r is None]
        n = len(texts)
        keys: list[bytes | None] = [None] * n
        stats: list[list[float] | None] = [None] * n
        bands: list[Any] = [None] * n
        shingles: list[Any] = [None] * n
        for i in kept:
            keys[i] = document_key(out_text[i])
            stats[i] = document_stats(out_text[i])
        if self._hasher is not None and kept:
            band_keys, sh, off = self._hasher.sketch([out_text[i] for i in kept])
            for j, i in enumerate(kept):
                bands[i] = band_keys[j]
                shingles[i] = sh[off[j]: off[j + 1]]
        return pa.table({
            "text": pa.array(out_text, pa.large_string()), "source": batch.column("source"),
            "id": batch.column("id"), "url": urls, "removal": removals_to_arrow(removals),
            "edits": edits_to_arrow(edits), "tallies": tallies_to_arrow(tallies),
            "key": pa.array(keys, pa.binary(16)), "stats": pa.array(stats, pa.list_(pa.float64())),
            "bands": _list_array(bands, pa.list_(pa.uint64())),
            "shingles": _list_array(shingles, pa.large_list(pa.uint64())),
        }, schema=CLEAN_SCHEMA)


def _list_array(values: list[np.ndarray | None], typ: pa.DataType) -> pa.Array:
    """A list array from numpy rows without a Python loop per element."""
    lengths = np.array([0 if v is None else len(v) for v in values], dtype=np.int64)
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = [v for v in values if v is not None and len(v)]
    data = np.concatenate(flat).astype(np.uint64) if flat else np.zeros(0, np.uint64)
    mask = np.array([v is None for v in values])
    off_type = pa.int64() if typ == pa.large_list(pa.uint64()) else pa.int32()
    arr_cls = pa.LargeListArray if off_type == pa.int64() else pa.ListArray
    return arr_cls.from_arrays(pa.array(offsets, off_type), pa.array(data, pa.uint64()),
                               mask=pa.array(mask) if mask.any() else None)


class LineKeysBatch:
    """Worker function for boilerplate counting: each document's distinct normalised line keys."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec

    def __call__(self, batch: pa.Table | pa.RecordBatch) -> pa.Table:
        norm = Normalizer(self.spec.normalize.model_copy(update={"remove_boilerplate_lines": False}))
        keys = [sorted(document_line_keys(norm(t or "")[0], 20)) for t in batch.column("text").to_pylist()]
        return pa.table({"keys": pa.array(keys, pa.list_(pa.binary(8)))})
