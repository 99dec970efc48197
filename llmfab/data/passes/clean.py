"""Passes 0 and 1: boilerplate lines, then clean, drop exact duplicates, spill, find near duplicates.

Pass 0 (only with ``normalize.removeBoilerplateLines``) reads the sources once to count in how
many documents each line occurs: a line is boilerplate only relative to the whole corpus.

Pass 1: the workers run the per-document steps (:class:`llmfab.data.cleaning.CleanBatch`) and
send back one row per document with its :class:`~llmfab.data.steps.Removal` or its key and
sketches. The driver sees the rows in input order, so the first copy read is the one exact dedup
keeps and the near-duplicate index numbers documents the same way whatever the engine or worker
count; survivors go to the :class:`~llmfab.data.passes.spill.Spill`. The near-duplicate clusters
are resolved at the end, when every sketch is in.
"""

from __future__ import annotations

import collections

import pyarrow as pa

from llmfab.data.cleaning import CleanBatch, LineKeysBatch
from llmfab.data.exact_dedup import ExactDeduplicator
from llmfab.data.near_dedup import MinHasher, NearDuplicateIndex
from llmfab.data.passes.context import BuildContext
from llmfab.data.passes.spill import Spill, SpillWriter
from llmfab.data.readers import read_documents
from llmfab.data.registry import READ, Runs, step_names
from llmfab.data.steps import StepCounter, edits_from_arrow, example, removals_from_arrow

NearDuplicates = dict[int, tuple[int, float]]  # spilled index → (index of the copy kept, Jaccard)
PROGRESS_EVERY_BATCHES = 20


def boilerplate_lines(ctx: BuildContext) -> frozenset[bytes]:
    """Keys of the lines found in at least ``boilerplateMinDocuments`` documents (pass 0)."""
    if not ctx.spec.normalize.remove_boilerplate_lines:
        return frozenset()
    counts: collections.Counter[bytes] = collections.Counter()
    # pass 1 reads the documents again and counts them then: this reading's counts are not kept
    documents = read_documents(ctx.spec, ctx.resolve, StepCounter(READ))
    for table in ctx.engine.map(LineKeysBatch(ctx.spec), documents):
        for keys in table.column("keys").to_pylist():
            counts.update(keys)
    threshold = ctx.spec.normalize.boilerplate_min_documents
    lines = frozenset(k for k, c in counts.items() if c >= threshold)
    ctx.extra["boilerplateLines"] = len(lines)
    return lines


class CleanPass:
    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx
        near = ctx.spec.dedup.near
        self.hasher = MinHasher(near) if near.enabled else None
        self.index = (NearDuplicateIndex(near, ctx.work / "shingles.u64", self.hasher.bands)
                      if self.hasher else None)
        self.exact = ExactDeduplicator()
        self.spill = Spill(ctx.work / "clean.arrow")

    def run(self) -> tuple[Spill, NearDuplicates]:
        ctx = self.ctx
        boilerplate = boilerplate_lines(ctx)
        documents = read_documents(ctx.spec, ctx.resolve, ctx.book.step(READ))
        with self.spill.writer() as writer:
            for batches, table in enumerate(ctx.engine.map(CleanBatch(ctx.spec, boilerplate), documents), 1):
                self._take(table, writer)
                if batches % PROGRESS_EVERY_BATCHES == 0:
                    self._settle_worker_steps()
                    ctx.progress()
        self._settle_worker_steps()
        if self.index is None or self.hasher is None:
            return self.spill, {}
        duplicates = self.index.duplicates()
        ctx.extra["nearDedup"] = {"bands": self.hasher.bands, "rows": self.hasher.rows,
                                  "threshold": ctx.spec.dedup.near.threshold}
        return self.spill, duplicates

    def _settle_worker_steps(self) -> None:
        """The workers report only removals: in/out follow from the documents read, step by step."""
        self.ctx.book.chain(step_names(Runs.DOCUMENT), self.ctx.book.step(READ).documents_out)

    def _take(self, table: pa.Table, writer: SpillWriter) -> None:
        """Count one batch of worker results, drop exact duplicates, spill and index the rest."""
        book, spill = self.ctx.book, self.spill
        texts, sources, ids = (table.column(c).to_pylist() for c in ("text", "source", "id"))
        keys = table.column("key").to_pylist()
        for edits in edits_from_arrow(table.column("edits")):
            for edit in edits:
                book.edit(edit)
        exact = book.step(ExactDeduplicator.name)
        keep: list[int] = []
        for i, removal in enumerate(removals_from_arrow(table.column("removal"))):
            if removal is not None:
                book.drop(removal, example(texts[i], sources[i], ids[i]))
                continue
            exact.documents_in += 1
            first = self.exact.check(keys[i], len(spill))
            if first is not None:
                exact.drop("exact_duplicate", example(texts[i], sources[i], ids[i], f"copy of {spill.labels[first]}"))
                continue
            keep.append(i)
            spill.labels.append(f"{sources[i]}:{ids[i]}")
        exact.documents_out += len(keep)
        if not keep:
            return
        kept = table.take(pa.array(keep, pa.int64()))
        if self.ctx.spec.filters.outliers.enabled:
            spill.stats.append(kept.column("stats").combine_chunks().values.to_numpy().reshape(len(keep), -1))
        writer.write(kept)
        if self.index is not None:
            bands = kept.column("bands").combine_chunks().values.to_numpy().reshape(len(keep), -1)
            shingles = kept.column("shingles").combine_chunks()
            offsets = shingles.offsets.to_numpy() - shingles.offsets[0].as_py()
            self.index.add(bands, shingles.values.to_numpy(), offsets)


def clean(ctx: BuildContext) -> tuple[Spill, NearDuplicates]:
    """Passes 0 and 1: the spilled survivors and the near-duplicate clusters among them."""
    return CleanPass(ctx).run()

