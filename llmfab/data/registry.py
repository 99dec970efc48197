"""The Dataset pipeline's steps, in order: the one list every other part reads.

Like a datatrove pipeline, the build is a list of steps; :data:`STEPS` is that list. The order of
``stats.json``'s ``steps``, of the resource status' ``steps``, of the per-document steps the
workers run and of the whole-corpus steps the driver runs all come from it, so adding or moving a
step is one line here. Each entry says where its step runs, because dedup and the statistical
filters need the whole corpus and cannot run per document in a worker:

- ``READ``: the readers count what they skip (malformed records, weight sampling);
- ``DOCUMENT``: one document at a time, in the workers (:mod:`llmfab.data.cleaning`), first drop wins;
  the URL filter first (it needs no text, and FineWeb runs it first), PII replacement last (it
  rewrites text the filters should judge as written, and exact dedup then sees the placeholders);
- ``STREAM``: in the driver, in input order, while the workers' results arrive (exact dedup);
- ``CORPUS``: in the driver, over every survivor at once (:mod:`llmfab.data.passes.select`).

Language identification comes first among the filters, as in FineWeb: the heuristics that follow
are tuned for the language it keeps.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from llmfab.api.dataset import DatasetSpec
from llmfab.data.c4 import C4QualityFilter
from llmfab.data.exact_dedup import ExactDeduplicator
from llmfab.data.fineweb import FineWebQualityFilter
from llmfab.data.gopher_quality import GopherQualityFilter
from llmfab.data.gopher_repetition import GopherRepetitionFilter
from llmfab.data.language import LanguageIdFilter
from llmfab.data.normalize import Normalizer
from llmfab.data.pii import PiiFormatter
from llmfab.data.steps import AnyStep
from llmfab.data.url_filter import UrlFilter, has_rules

READ = "read"


class Runs(enum.Enum):
    """Where a step runs (see the module docstring)."""

    READ = "read"
    DOCUMENT = "document"
    STREAM = "stream"
    CORPUS = "corpus"


def _always(spec: DatasetSpec) -> bool:
    return True


@dataclass(frozen=True)
class StepDefinition:
    """One pipeline step: its name in stats and status, where it runs and, for a per-document
    step, how the workers build it from the spec and the boilerplate lines found in pass 0."""

    name: str
    runs: Runs
    build: Callable[[DatasetSpec, frozenset[bytes]], AnyStep] | None = None
    enabled: Callable[[DatasetSpec], bool] = _always
    # normalize rewrites nearly every document; only a filter's removed lines are worth reporting
    reports_edits: bool = True


STEPS: tuple[StepDefinition, ...] = (
    StepDefinition(READ, Runs.READ),
    StepDefinition(UrlFilter.name, Runs.DOCUMENT, lambda spec, _: UrlFilter(spec.filters.url),
                   lambda spec: spec.filters.url.enabled and has_rules(spec.filters.url)),
    StepDefinition(Normalizer.name, Runs.DOCUMENT, lambda spec, boiler: Normalizer(spec.normalize, boiler),
                   reports_edits=False),
    StepDefinition(LanguageIdFilter.name, Runs.DOCUMENT, lambda spec, _: LanguageIdFilter(spec.filters.language),
                   lambda spec: spec.filters.language.enabled),
    StepDefinition(GopherRepetitionFilter.name, Runs.DOCUMENT,
                   lambda spec, _: GopherRepetitionFilter(spec.filters.gopher_repetition),
                   lambda spec: spec.filters.gopher_repetition.enabled),
    StepDefinition(GopherQualityFilter.name, Runs.DOCUMENT,
                   lambda spec, _: GopherQualityFilter(spec.filters.gopher_quality),
                   lambda spec: spec.filters.gopher_quality.enabled),
    StepDefinition(C4QualityFilter.name, Runs.DOCUMENT, lambda spec, _: C4QualityFilter(spec.filters.c4),
                   lambda spec: spec.filters.c4.enabled),
    StepDefinition(FineWebQualityFilter.name, Runs.DOCUMENT, lambda spec, _: FineWebQualityFilter(spec.filters.fineweb),
                   lambda spec: spec.filters.fineweb.enabled),
    StepDefinition(PiiFormatter.name, Runs.DOCUMENT, lambda spec, _: PiiFormatter(spec.filters.pii),
                   lambda spec: spec.filters.pii.enabled and (spec.filters.pii.emails or spec.filters.pii.ip_addresses)),
    StepDefinition(ExactDeduplicator.name, Runs.STREAM),
    StepDefinition("near_dedup", Runs.CORPUS, enabled=lambda spec: spec.dedup.near.enabled),
    StepDefinition("perplexity", Runs.CORPUS, enabled=lambda spec: spec.filters.perplexity.enabled),
    StepDefinition("outliers", Runs.CORPUS, enabled=lambda spec: spec.filters.outliers.enabled),
)

STEP_NAMES: tuple[str, ...] = tuple(d.name for d in STEPS)


def step_names(runs: Runs) -> tuple[str, ...]:
    """Every step that runs there, enabled or not (a disabled step still reports in = out)."""
    return tuple(d.name for d in STEPS if d.runs is runs)


def document_steps(spec: DatasetSpec, boilerplate: frozenset[bytes] = frozenset()
                   ) -> list[tuple[StepDefinition, AnyStep]]:
    """The enabled per-document steps, built for ``spec``, in pipeline order."""
    return [(d, d.build(spec, boilerplate)) for d in STEPS
            if d.runs is Runs.DOCUMENT and d.build is not None and d.enabled(spec)]
