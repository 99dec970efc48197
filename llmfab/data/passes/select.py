"""Pass 2: the steps that need the whole corpus decide which spilled documents stay.

Near dedup (the clusters found in pass 1), the CCNet-style perplexity band and the z-score
outliers each see only the documents the step before left, in the order of
:data:`llmfab.data.registry.STEPS`; the result is a keep mask over the spill, which the tokenizer
and shard passes read. A mask rather than a second spill file: one boolean per document.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

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
                self.filters[definition.name](keep, step)
            step.documents_out = int(keep.sum())
        return keep

    def near_dedup(self, keep: np.ndarray, step: StepCounter) -> None:
        """Drop all but the first document of each cluster; examples for the first few dropped."""
        dups = self.duplicates
        if not dups:
            return
        keep[sorted(dups)] = False
        shown = sorted(dups)[:EXAMPLES_PER_REASON]
        for start, table in self.spill.tables():
            for i in shown:
                if start <= i < start + table.num_rows:
                    kept_as, jac = dups[i]
                    step.drop("near_duplicate", example(
                        table.column("text")[i - start].as_py(), "", self.spill.labels[i],
                        f"duplicate of {self.spill.labels[kept_as]} (jaccard {jac:.3f})"), count=0)
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
                step.drop("perplexity_above_band" if ppl[i] > hi else "perplexity_below_band",
                          example("", "", self.spill.labels[i], f"perplexity {ppl[i]:.1f}"))
        self.ctx.extra["perplexityBand"] = [lo, hi]

    def outliers(self, keep: np.ndarray, step: StepCounter) -> None:
        """Drop documents with a statistic more than ``maxZScore`` deviations from the mean."""
        alive = np.flatnonzero(keep)
        reasons = outlier_reasons(np.concatenate(self.spill.stats)[alive], self.ctx.spec.filters.outliers.max_z_score)
        for i, r in zip(alive.tolist(), reasons, strict=True):
            if r is not None:
                keep[i] = False
                step.drop(r, example("", "", self.spill.labels[i]))


def select(ctx: BuildContext, spill: Spill, duplicates: NearDuplicates) -> np.ndarray:
    """Pass 2: the keep mask over the spilled documents."""
    return SelectPass(ctx, spill, duplicates).run()

