"""Pass 2: the steps that need the whole corpus decide which spilled documents stay.

Near dedup (the clusters found in pass 1), the CCNet-style perplexity band and the z-score
outliers each see only the documents the step before left, in the order of
:data:`llmfab.data.registry.STEPS`; the result is a keep mask over the spill, which the tokenizer
and shard passes read. A mask rather than a second spill file: one boolean per document.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from llmfab.data.audit import RemovedDocument, rank
from llmfab.data.outliers import outlier_reasons
from llmfab.data.passes.clean import NearDuplicates
from llmfab.data.passes.context import BuildContext
from llmfab.data.passes.spill import Spill
from llmfab.data.perplexity import NgramModel, band_mask
from llmfab.data.registry import STEPS, Runs
from llmfab.data.steps import EXAMPLES_PER_REASON, StepCounter, example
from llmfab.errors import WorkloadError

LM_SAMPLE_DOCUMENTS = 20_000


class SelectPass:
    def __init__(self, ctx: BuildContext, spill: Spill, duplicates: NearDuplicates) -> None:
        self.ctx, self.spill, self.duplicates = ctx, spill, duplicates
        self.reasons: dict[int, str] = {}  # spilled index → why a corpus step removed it
        self.notes: dict[int, str] = {}
        # one method per Runs.CORPUS step of the registry, which alone says their order
        self.filters: dict[str, Callable[[np.ndarray, StepCounter], None]] = {
            "near_dedup": self.near_dedup, "perplexity": self.perplexity, "outliers": self.outliers}

    def run(self) -> np.ndarray:
        keep = np.ones(len(self.spill), dtype=bool)
        for definition in STEPS:
            if definition.runs is not Runs.CORPUS:
                continue
            step = self.ctx.book.step(definition.name)
            step.documents_in = int(keep.sum())
            if definition.enabled(self.ctx.spec) and keep.any():
                before = keep.copy()
                self.filters[definition.name](keep, step)
                self._sample(step, np.flatnonzero(before & ~keep))
            step.documents_out = int(keep.sum())
        return keep

    def _sample(self, step: StepCounter, removed: np.ndarray) -> None:
        """Offer the audit trail the documents ``step`` removed that its sample can hold: the
        ``k`` of smallest rank per reason, read back from the spill (text, source, id, URL)."""
        k = step.sample_size
        if not k or not len(removed):
            return
        reasons = self.reasons
        by_reason: dict[str, list[int]] = {}
        for i in removed.tolist():
            by_reason.setdefault(reasons.get(i, step.name), []).append(i)
        chosen = {i for idx in by_reason.values()
                  for i in heapq.nsmallest(k, idx, key=lambda i: (rank(self.spill.labels[i]), i))}
        rows = self.spill.rows(chosen, ["text", "source", "id", "url"])
        chars = self.ctx.spec.audit.max_characters + 1
        for i in sorted(chosen):
            row = rows[i]
            step.sample(reasons.get(i, step.name), RemovedDocument(
                str(row["text"])[:chars], str(row["source"]), str(row["id"]), self.notes.get(i, ""),
                str(row["url"] or "")))

    def near_dedup(self, keep: np.ndarray, step: StepCounter) -> None:
        """Drop all but the first document of each cluster; examples for the first few dropped."""
        dups = self.duplicates
        if not dups:
            return
        keep[sorted(dups)] = False
        for i, (kept_as, jac) in dups.items():
            self.reasons[i] = "near_duplicate"
            self.notes[i] = f"duplicate of {self.spill.labels[kept_as]} (jaccard {jac:.3f})"
        shown = sorted(dups)[:EXAMPLES_PER_REASON]
        for start, table in self.spill.tables():
            for i in shown:
                if start <= i < start + table.num_rows:
                    kept_as, jac = dups[i]
                    step.drop("near_duplicate", example(
                        table.column("text")[i - start].as_py(), "", self.spill.labels[i],
                        f"duplicate of {self.spill.labels[kept_as]} (jaccard {jac:.3f})"), count=0, sample=False)
            if start > shown[-1]:
                break
        step.removed["near_duplicate"] = len(dups)

    def perplexity(self, keep: np.ndarray, step: StepCounter) -> None:
        """Drop documents outside the percentile band of n-gram perplexity (a reference text's
        model, or one fitted on a sample of the corpus)."""
        p = self.ctx.spec.filters.perplexity
        model = NgramModel(p.order)
        if p.reference:
            ref = self.ctx.resolve(p.reference)
            files = sorted(ref.rglob("*.txt")) if ref.is_dir() else [ref]
            if not ref.exists() or not files:
                raise WorkloadError(f"spec.filters.perplexity.reference: {p.reference!r} does not exist or has "
                                    "no .txt files; point it at reference text or remove it to use the corpus")
            model.fit([f.read_text(errors="replace")] for f in files)
        else:
            model.fit(self.spill.texts(keep, limit=LM_SAMPLE_DOCUMENTS))
        ppl = np.full(len(keep), np.inf)
        for start, table in self.spill.tables():
            ppl[start: start + table.num_rows] = model.perplexity(table.column("text").to_pylist())
        alive = np.flatnonzero(keep)
        mask, lo, hi = band_mask(ppl[alive], p.low_percentile, p.high_percentile)
        for i, ok in zip(alive.tolist(), mask.tolist(), strict=True):
            if not ok:
                keep[i] = False
                reason = "perplexity_above_band" if ppl[i] > hi else "perplexity_below_band"
                self.reasons[i], self.notes[i] = reason, f"perplexity {ppl[i]:.1f}"
                step.drop(reason, example("", "", self.spill.labels[i], self.notes[i]), sample=False)
        self.ctx.extra["perplexityBand"] = [lo, hi]

    def outliers(self, keep: np.ndarray, step: StepCounter) -> None:
        """Drop documents with a statistic more than ``maxZScore`` deviations from the mean."""
        alive = np.flatnonzero(keep)
        reasons = outlier_reasons(np.concatenate(self.spill.stats)[alive], self.ctx.spec.filters.outliers.max_z_score)
        for i, r in zip(alive.tolist(), reasons, strict=True):
            if r is not None:
                keep[i] = False
                self.reasons[i] = r
                step.drop(r, example("", "", self.spill.labels[i]), sample=False)


def select(ctx: BuildContext, spill: Spill, duplicates: NearDuplicates) -> np.ndarray:
    """Pass 2: the keep mask over the spilled documents."""
    return SelectPass(ctx, spill, duplicates).run()

