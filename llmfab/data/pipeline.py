"""The Dataset pipeline: sources → clean → dedup → filter → split → tokenizer → token shards.

Entry point for the workload and for benchmarks::

    build_dataset(spec: DatasetSpec, out_dir: Path, resolve: Callable[[str], Path],
                  reporter: StatusReporter | None = None, workers: int | None = None,
                  dependency: Callable[[str, str], Path] | None = None) -> dict

It writes ``tokenizer.model``, ``tokenizer/``, ``train|val|test/`` shards and ``stats.json`` into
``out_dir`` and returns the manifest body (without ``specHash``/``createdAt``); the caller writes
the manifest last (:mod:`llmfab.data.workload` does, inside ``staged_directory``). ``resolve``
turns spec paths into files; ``dependency(kind, name)`` finds another Dataset for
``tokenizer.fromDataset``; ``workers`` overrides ``spec.engine.workers``.

Passes, each a module of :mod:`llmfab.data.passes`: (0, only with
``normalize.removeBoilerplateLines``) count line keys across documents; (1) workers normalise,
filter and sketch each batch, the driver drops exact duplicates in input order and spills
survivors to an Arrow file; the near-duplicate clusters are then resolved (:mod:`~.passes.clean`);
(2) near dedup, perplexity and outlier filters give a keep mask (:mod:`~.passes.select`);
(3) tokenizer training on the train split and its Hugging Face copy (:mod:`~.passes.tokenizer`);
(4) workers encode with that Hugging Face copy, the driver writes shards in input order
(:mod:`~.passes.shards`); (5) a sample read back from the shards is checked against the tokenizer
as transformers/vLLM load it (:mod:`~.passes.served_check`). The steps and their order are
:data:`llmfab.data.registry.STEPS`. Everything the driver decides depends only on input order, so
any engine and worker count give the same bytes, and so does a build that resumed from the
checkpoints a killed one left in ``out_dir/_work`` (:mod:`~.passes.checkpoint`). Last, beside
``stats.json``, the audit trail: a sample of each step's removed documents per reason in
``removed/`` (:mod:`llmfab.data.audit`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmfab.api.dataset import DatasetSpec
from llmfab.data import url_filter
from llmfab.data.audit import write_removed
from llmfab.data.engine import make_engine
from llmfab.data.passes.checkpoint import Checkpoints, fsync_tree, input_units, prepare
from llmfab.data.passes.clean import clean
from llmfab.data.passes.context import WORK_DIR, BuildContext
from llmfab.data.passes.select import select
from llmfab.data.passes.served_check import CheckSample, check_served_ids
from llmfab.data.passes.shards import write_shards
from llmfab.data.passes.spill import Spill
from llmfab.data.passes.tokenizer import build_tokenizer, reused_tokenizer
from llmfab.data.registry import READ, STEP_NAMES
from llmfab.data.steps import StepStatsBook
from llmfab.errors import WorkloadError
from llmfab.status import StatusReporter


def build_dataset(spec: DatasetSpec, out_dir: Path, resolve: Callable[[str], Path],
                  reporter: StatusReporter | None = None, workers: int | None = None,
                  dependency: Callable[[str, str], Path] | None = None, fresh: bool = False) -> dict[str, Any]:
    """Build the Dataset into ``out_dir``; return the manifest body (see the module docstring).
    A checkpoint left in ``out_dir`` by a killed build of the same spec is resumed from, unless
    ``fresh``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)  # a local Ray may put its temporary directory here
    spec = spec.model_copy(update={"filters": spec.filters.model_copy(
        update={"url": url_filter.resolved(spec.filters.url, resolve)})})  # the workers have no spec file
    work = out / WORK_DIR
    work.mkdir(exist_ok=True)
    checkpoints = Checkpoints(work, spec, input_units(spec, resolve),
                              tuple(url_filter.list_identities(spec.filters.url)))
    book = StepStatsBook(STEP_NAMES, spec.audit.samples_per_reason)
    extra: dict[str, Any] = {}
    if spec.filters.url.enabled and url_filter.has_rules(spec.filters.url):
        extra["urlFilter"] = url_filter.list_sizes(spec.filters.url)  # a bad list fails here, before reading
    state = prepare(out, work, checkpoints, fresh)
    if state is not None:
        book, extra = StepStatsBook.from_state(state["book"]), state["extra"]
        if reporter is not None:
            done = len(state["inputs"])
            reporter.event("Resumed", f"resuming a killed build from its checkpoint ({state['phase']}): {done} of "
                           f"{sum(len(u) for u in checkpoints.units)} input files done")
    ctx = BuildContext(spec, out, resolve, make_engine(spec.engine, out, workers), book, reporter, extra)
    phase = state["phase"] if state is not None else "boilerplate"
    try:
        reused = reused_tokenizer(spec, resolve, dependency)
        if phase in ("boilerplate", "clean"):
            spill, duplicates = clean(ctx, checkpoints, state)
            ctx.progress()
            keep = select(ctx, spill, duplicates)
            np.save(work / "keep.npy", keep)
            fsync_tree(work / "keep.npy")
            checkpoints.save("selected", segments=spill.segments, book=ctx.book.state(), extra=ctx.extra)
        else:
            assert state is not None
            spill = Spill(work)
            for _ in spill.restore(state["segments"], spec.filters.outliers.enabled):
                pass
            keep = np.load(work / "keep.npy")
        ctx.progress()
        if not keep.any():
            raise WorkloadError(_empty_message(ctx.book))
        if phase == "tokenizer":
            model = out / "tokenizer.model"
        else:
            model = build_tokenizer(ctx, spill, keep, reused)
            fsync_tree(model, out / "tokenizer")
            checkpoints.save("tokenizer", segments=spill.segments, book=ctx.book.state(), extra=ctx.extra)
        sample = CheckSample(int(keep.sum()))
        manifest = write_shards(ctx, spill, keep, model, ctx.out / "tokenizer", sample)
        check_served_ids(ctx, manifest, sample, model, reused is not None)
    finally:
        ctx.engine.close()
    shutil.rmtree(ctx.work, ignore_errors=True)
    split_tokens = {s: v["tokens"] for s, v in manifest["splits"].items()}
    documents = sum(v["documents"] for v in manifest["splits"].values())
    stats = {"steps": ctx.book.stats(), "documents": documents, "tokens": sum(split_tokens.values()),
             "splitTokens": split_tokens, **ctx.extra}
    if spec.audit.samples_per_reason:
        stats["removedSamples"] = write_removed(out, ctx.book.samples(), ctx.book.removed(),
                                                spec.audit.samples_per_reason, spec.audit.max_characters)
    (out / "stats.json").write_text(json.dumps(stats, indent=2, default=str) + "\n")
    ctx.progress(documents=documents, tokens=stats["tokens"], splitTokens=split_tokens,
                 vocabSize=manifest["vocabSize"])
    return {"kind": "Dataset", **manifest}


def _empty_message(book: StepStatsBook) -> str:
    top = ", ".join(f"{r.step}:{r.reason} {n}" for r, n in book.removals().most_common(4)) or "nothing was read"
    read = book.step(READ).documents_in
    return (f"spec.filters: no documents left after cleaning ({read} read; removed: {top}); loosen or "
            "disable the steps that removed most (spec.filters.*, spec.dedup) or add sources")
