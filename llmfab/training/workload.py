"""``llmfab train run --spec FILE``: one TrainingRun, on one process or under torchrun.

This module hands the run to the objective ``spec.objective`` names (``objectives.MODULES``); how
it trains here or starts torchrun on itself is ``loop/launcher.py``.

When the spec asks for more than one process and this process was not started by torchrun (no
``LOCAL_RANK``), it starts torchrun on itself. Environment variables read for that, so the same
command works locally and in a cluster pod:

- ``LLMFAB_RDZV_ENDPOINT`` (``host:port``) — the c10d rendezvous; else ``MASTER_ADDR:MASTER_PORT``
  (port default 29500); else, for one node, ``127.0.0.1`` and a free port.
- ``LLMFAB_NODE_RANK``, else ``JOB_COMPLETION_INDEX`` (Indexed Job), else ``NODE_RANK``, else 0.

Inside the workers torchrun sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``
(``training/components/distributed.py``). ``LLMFAB_CPU_BF16=force|off`` overrides the probe that picks bf16 or
fp32 on CPUs for ``precision: auto|bf16`` (``training/components/precision.py``).

A worker that runs out of memory under torchrun records a halved micro-batch in the run's
``micro-batch.json`` and fails (``training/components/batching.py``); on one node this launcher then restarts
torchrun, and the workers resume from the last checkpoint at the smaller size. Across nodes,
``parallelism.maxRestarts`` (torchrun ``--max-restarts``) restarts every node's workers together.

The run directory is not staged as a whole: checkpoints must survive a crash so the next attempt
resumes. Each checkpoint and the ``model/`` export are atomic, and ``manifest.json`` — what marks
the run complete — is written last, by rank 0, after the export.
"""

from __future__ import annotations

from llmfab.api.training_run import TrainingRun, TrainingRunSpec
from llmfab.errors import StageNotSupported
from llmfab.training.objectives import MODULES, objective_module
from llmfab.workload import WorkloadContext


def run(ctx: WorkloadContext) -> None:
    resource = ctx.resource
    assert isinstance(resource, TrainingRun)
    refuse_unsupported(resource.spec)
    module = objective_module(resource.spec.objective)
    assert module is not None  # refused above
    module.run(ctx, resource.spec)


def refuse_unsupported(spec: TrainingRunSpec) -> None:
    """Fields that validate but that this trainer cannot honour yet are refused, never ignored."""
    module = objective_module(spec.objective)
    if module is None:
        raise StageNotSupported(
            f"spec.objective: {spec.objective!r} is not implemented by this trainer yet; use {', '.join(MODULES)}"
        )
    module.refuse_unsupported(spec)
