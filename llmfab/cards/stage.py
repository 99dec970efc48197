"""The card facts of the model a stage exports: what the workload knows then (steps, tokens,
precision, hardware, its data, the chain before it, the usage its status has so far).

:func:`release` runs before the work too, so a licence nobody stated fails a run in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmfab.api.release import Release
from llmfab.cards.facts import (
    CardError,
    CardFacts,
    DataFacts,
    ReleaseFacts,
    Role,
    StageFacts,
    chain_of,
    resolve_release,
    stage_of,
)
from llmfab.errors import WorkloadError
from llmfab.machine import cpu_model
from llmfab.workload import WorkloadContext


def release(spec_release: Release, parent_dir: Path | None, parent_label: str | None) -> ReleaseFacts:
    """The resolved ``spec.release`` (:func:`llmfab.cards.facts.resolve_release`), as a WorkloadError."""
    try:
        return resolve_release(spec_release, parent_dir, parent_label)
    except CardError as e:
        raise WorkloadError(str(e)) from e


def hardware(world_size: int) -> str:
    """``<processes> x <device>``: the GPU's name under CUDA, else the CPU's model name."""
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu_model()} (CPU, {os.cpu_count()} threads)"
    return f"{world_size} x {device}"


def facts(ctx: WorkloadContext, spec_release: Release, role: Role, *, steps: int | None, tokens: int | None,
          precision: str | None, world_size: int | None, data: list[DataFacts], figures: dict[str, float],
          parent_dir: Path | None = None, parent_label: str | None = None, related: list[Path] | None = None,
          details: dict[str, Any] | None = None, dataset: str | None = None) -> CardFacts:
    """The card facts of the model this stage exports (its ``model`` part is filled by the export)."""
    resolved = release(spec_release, parent_dir, parent_label)
    usage = ctx.reporter.current().get("usage")
    this = StageFacts(kind=ctx.resource.KIND, name=ctx.resource.name, role=role, license=resolved.license,
                      repo_id=resolved.repo_id, steps=steps, tokens=tokens, precision=precision,
                      hardware=hardware(world_size) if world_size else None, data=data, figures=figures,
                      usage=usage if isinstance(usage, dict) else None)
    parents = chain_of(parent_dir)
    used = [s for s in (stage_of(p) for p in related or []) if s is not None]
    for stage in [*parents, *used]:  # each one's usage as its status has it now, where readable
        now = ctx.reporter.status_of(stage.kind, stage.name).get("usage")
        stage.usage = now if isinstance(now, dict) else stage.usage
    return CardFacts(this=this, release=resolved, model=None, parents=parents, related=used,
                     details=details or {}, dataset=dataset)
