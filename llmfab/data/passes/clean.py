"""Passes 0 and 1: boilerplate lines, then clean, drop exact duplicates, spill, find near duplicates.

Pass 0 (only with ``normalize.removeBoilerplateLines``, :mod:`~.boilerplate`) reads the sources
once to count in how many documents each line occurs.

Pass 1: the workers run the per-document steps (:class:`llmfab.data.cleaning.CleanBatch`) and
send back one row per document with its :class:`~llmfab.data.steps.Removal` or its key and
sketches. The driver sees the rows in input order, so the first copy read is the one exact dedup
keeps and the near-duplicate index numbers documents the same way whatever the engine or worker
count; survivors go to the :class:`~llmfab.data.passes.spill.Spill`. The near-duplicate clusters
are resolved at the end, when every sketch is in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmfab.data.cleaning import CleanBatch
from llmfab.data.exact_dedup import ExactDeduplicator
from llmfab.data.near_dedup import MinHasher, NearDuplicateIndex
from llmfab.data.passes.boilerplate import boilerplate_lines
from llmfab.data.passes.checkpoint import Boundary, Checkpoints, Position, UnitTracker
from llmfab.data.passes.context import BuildContext
from llmfab.data.passes.spill import Spill, SpillWriter
from llmfab.data.readers import read_documents
from llmfab.data.registry import READ, Runs, step_names
from llmfab.data.steps import edits_from_arrow, example, removals_from_arrow, tallies_from_arrow

NearDuplicates = dict[int, tuple[int, float]]  # spilled index → (index of the copy kept, Jaccard)
PROGRESS_EVERY_BATCHES = 20


class CleanPass:
    def __init__(self, ctx: BuildContext, checkpoints: Checkpoints, state: dict[str, Any] | None) -> None:
        """``state``: the ``clean`` checkpoint to resume from, or None to start afresh (or pass 0's)."""
        self.ctx = ctx
        self.checkpoints = checkpoints
        near = ctx.spec.dedup.near
        self.hasher = MinHasher(near) if near.enabled else None
        self.exact = ExactDeduplicator()
        self.spill = Spill(ctx.work)
        self.position: Position = (0, 0, 0)
        self.done = 0  # documents this run's reader yielded whose results are handled
        restored: tuple[list[np.ndarray], np.ndarray] | None = None
        if state is not None and state["phase"] == "clean":
            self.position = (state["position"][0], state["position"][1], state["position"][2])
            restored = self._restore(state["segments"])
        self.index = (NearDuplicateIndex(near, ctx.work / "shingles.u64", self.hasher.bands, restored)
                      if self.hasher else None)

    def _restore(self, segments: int) -> tuple[list[np.ndarray], np.ndarray]:
        """The exact-dedup keys, labels and statistics of the spilled documents, read back from the
        closed segments; returns the near-dedup index's band keys and shingle counts."""
        bands: list[np.ndarray] = []
        sizes: list[np.ndarray] = []
        for table in self.spill.restore(segments, self.ctx.spec.filters.outliers.enabled):
            first = len(self.spill) - table.num_rows
            for j, key in enumerate(table.column("key").to_pylist()):
                self.exact.check(key, first + j)
            if self.hasher is not None and table.num_rows:
                bands.append(table.column("bands").combine_chunks().values.to_numpy().reshape(table.num_rows, -1))
                sizes.append(table.column("shingles").to_numpy())
        return bands, np.concatenate(sizes) if sizes else np.zeros(0, np.int64)

    def run(self, state: dict[str, Any] | None) -> tuple[Spill, NearDuplicates]:
        ctx = self.ctx
        boilerplate = boilerplate_lines(ctx, self.checkpoints, state)
        tracker = UnitTracker(self.position, ctx.book.step(READ))
        documents = read_documents(ctx.spec, ctx.resolve, ctx.book.step(READ), progress=tracker)
        with self.spill.writer() as writer:
            for batches, table in enumerate(ctx.engine.map(CleanBatch(ctx.spec, boilerplate), documents), 1):
                for part, boundary in tracker.cut(table, self.done):
                    self._take(part, writer)
                    self.done += part.num_rows
                    if boundary is not None:
                        self._checkpoint(writer, boundary)
                if batches % PROGRESS_EVERY_BATCHES == 0:
                    self._settle_worker_steps()
                    ctx.progress()
            self._checkpoint(writer, tracker.final(self.done))
        self._settle_worker_steps()
        if self.index is None or self.hasher is None:
            return self.spill, {}
        duplicates = self.index.duplicates()
        ctx.extra["nearDedup"] = {"bands": self.hasher.bands, "rows": self.hasher.rows,
                                  "threshold": ctx.spec.dedup.near.threshold}
        return self.spill, duplicates

    def _checkpoint(self, writer: SpillWriter, boundary: Boundary) -> None:
        """Record that the units before ``boundary.position`` are done (see :mod:`.checkpoint`)."""
        writer.cut()
        if self.index is not None:
            self.index.flush()
        book = self.ctx.book.state()
        book["steps"] = [boundary.read if s["name"] == READ else s for s in book["steps"]]
        self.checkpoints.save("clean", boundary.position, segments=self.spill.segments,
                              shingles=self.index.offsets[-1] if self.index is not None else 0, book=book,
                              extra=self.ctx.extra)

    def _settle_worker_steps(self) -> None:
        """The workers report only removals: in/out follow from the documents read, step by step."""
        self.ctx.book.chain(step_names(Runs.DOCUMENT), self.ctx.book.step(READ).documents_out)

    def _take(self, table: pa.Table, writer: SpillWriter) -> None:
        """Count one batch of worker results, drop exact duplicates, spill and index the rest."""
        book, spill = self.ctx.book, self.spill
        texts, sources, ids, urls = (table.column(c).to_pylist() for c in ("text", "source", "id", "url"))
        keys = table.column("key").to_pylist()
        for edits in edits_from_arrow(table.column("edits")):
            for edit in edits:
                book.edit(edit)
        for tallies in tallies_from_arrow(table.column("tallies")):
            for tally in tallies:
                book.tally(tally)
        exact = book.step(ExactDeduplicator.name)
        keep: list[int] = []
        for i, removal in enumerate(removals_from_arrow(table.column("removal"))):
            if removal is not None:
                book.drop(removal, example(texts[i], sources[i], ids[i], url=urls[i]))
                continue
            exact.documents_in += 1
            first = self.exact.check(keys[i], len(spill))
            if first is not None:
                exact.drop("exact_duplicate", example(texts[i], sources[i], ids[i], f"copy of {spill.labels[first]}",
                                                      urls[i]))
                continue
            keep.append(i)
            spill.labels.append(f"{sources[i]}:{ids[i]}")
        exact.documents_out += len(keep)
        if not keep:
            return
        kept = table.take(pa.array(keep, pa.int64()))
        if self.ctx.spec.filters.outliers.enabled:
            spill.stats.append(kept.column("stats").combine_chunks().values.to_numpy().reshape(len(keep), -1))
        sizes = pc.fill_null(pc.list_value_length(kept.column("shingles")), 0).cast(pa.int64())
        writer.write(kept.set_column(kept.schema.get_field_index("shingles"), "shingles", sizes))
        if self.index is not None:
            bands = kept.column("bands").combine_chunks().values.to_numpy().reshape(len(keep), -1)
            shingles = kept.column("shingles").combine_chunks()
            offsets = shingles.offsets.to_numpy() - shingles.offsets[0].as_py()
            self.index.add(bands, shingles.values.to_numpy(), offsets)


def clean(ctx: BuildContext, checkpoints: Checkpoints, state: dict[str, Any] | None) -> tuple[Spill, NearDuplicates]:
    """Passes 0 and 1: the spilled survivors and the near-duplicate clusters among them."""
    return CleanPass(ctx, checkpoints, state).run(state)
