"""``llmfab data run --spec FILE``: build a Dataset artifact.

Everything is written into a temporary sibling of ``<root>/datasets/<name>`` that is renamed into
place only after the manifest (written last, with the spec hash) exists, so a failure or a
SIGKILL never leaves a directory that looks complete. The sibling is named by the spec hash, so a
build that was killed or stopped is resumed by the next run of the same spec from its checkpoints
(:mod:`llmfab.data.passes.checkpoint`); ``--force`` starts afresh. User errors (missing source, bad file,
wrong text field, empty corpus, impossible vocabulary, missing tokenizer) arrive here as
:class:`llmfab.workload.WorkloadError` naming the field and the fix.
"""

from __future__ import annotations

from typing import Any

from llmfab.api.dataset import Dataset, Source
from llmfab.data.pipeline import build_dataset
from llmfab.store import staged_directory, write_manifest
from llmfab.workload import WorkloadContext


def run(ctx: WorkloadContext) -> None:
    resource = ctx.resource
    assert isinstance(resource, Dataset)
    with staged_directory(ctx.out_dir, resume_key=ctx.spec_hash[:16]) as tmp:
        manifest: dict[str, Any] = build_dataset(
            resource.spec, tmp, ctx.resolve, reporter=ctx.reporter, dependency=ctx.dependency, fresh=ctx.force
        )
        manifest["name"] = resource.name
        manifest["sources"] = [source_record(s) for s in resource.spec.sources]
        write_manifest(tmp, manifest, ctx.spec_hash)
    splits = manifest["splits"]
    ctx.reporter.event("Built", f"{sum(s['documents'] for s in splits.values())} documents, "
                       f"{sum(s['tokens'] for s in splits.values())} tokens in {ctx.out_dir}")


def source_record(source: Source) -> dict[str, Any]:
    """What the model cards say of a source: its name, where it was read from, its licence and origin
    as the spec states them (``None``: not stated). Documents read per source are in ``stats.json``."""
    origin = ({"path": source.path} if source.path is not None
              else {"huggingface": source.huggingface.model_dump(mode="json", by_alias=True, exclude_none=True)}
              if source.huggingface is not None else {})
    return {"name": source.name or source.path or (source.huggingface.path if source.huggingface else None),
            **origin, "format": source.format, "license": source.license, "origin": source.origin}
