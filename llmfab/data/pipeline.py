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
any engine and worker count give the same bytes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmfab.api.dataset import DatasetSpec
from llmfab.data.engine import make_engine
from llmfab.data.passes.clean import clean
from llmfab.data.passes.context import BuildContext
from llmfab.data.passes.select import select
from llmfab.data.passes.served_check import CheckSample, check_served_ids
from llmfab.data.passes.shards import write_shards
from llmfab.data.passes.tokenizer import build_tokenizer, reused_tokenizer
from llmfab.data.registry import READ, STEP_NAMES
from llmfab.data.steps import StepStatsBook
from llmfab.errors import WorkloadError
from llmfab.status import StatusReporter


def build_dataset(spec: DatasetSpec, out_dir: Path, resolve: Callable[[str], Path],
                  reporter: StatusReporter | None = None, workers: int | None = None,
                  dependency: Callable[[str, str], Path] | None = None) -> dict[str, Any]:
    """Build the Dataset into ``out_dir``; return the manifest body (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)  # a local Ray may put its temporary directory here
    ctx = BuildContext(spec, out, resolve, make_engine(spec.engine, out, workers), StepStatsBook(STEP_NAMES),
                       reporter)
    ctx.work.mkdir(exist_ok=True)
    try:
        reused = reused_tokenizer(spec, resolve, dependency)
        spill, duplicates = clean(ctx)
        ctx.progress()
        keep = select(ctx, spill, duplicates)
        ctx.progress()
        if not keep.any():
            raise WorkloadError(_empty_message(ctx.book))
        model = build_tokenizer(ctx, spill, keep, reused)
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
    (out / "stats.json").write_text(json.dumps(stats, indent=2, default=str) + "\n")
    ctx.progress(documents=documents, tokens=stats["tokens"], splitTokens=split_tokens,
                 vocabSize=manifest["vocabSize"])
    return {"kind": "Dataset", **manifest}


def _empty_message(book: StepStatsBook) -> str:
    top = ", ".join(f"{r.step}:{r.reason} {n}" for r, n in book.removals().most_common(4)) or "nothing was read"
    read = book.step(READ).documents_in
    return (f"spec.filters: no documents left after cleaning ({read} read; removed: {top}); loosen or "
            "disable the steps that removed most (spec.filters.*, spec.dedup) or add sources")
