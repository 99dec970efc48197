"""The objectives a TrainingRun trains for, by the name ``spec.objective`` gives them.

Each is a module with ``refuse_unsupported(spec)`` (fields it validates but cannot honour yet are
refused, never ignored) and ``run(ctx, spec)``. pretrain, distill and sft train through the loop
(``loop.trainer``) by subclassing ``loop.objective.Objective``; rl (GRPO) samples its batches from
the policy itself and runs a step loop of its own built from the same components. The RewardModel
kind's Bradley-Terry training is :mod:`reward` (its own stage, ``llmfab reward run``).

Modules are named here, not imported: the workload loads only the one a run asks for, so no
objective's dependencies (transformers for sft and rl) load for another, and adding an objective is
a new module plus one line below.
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = {
    "pretrain": "llmfab.training.objectives.pretrain",
    "distill": "llmfab.training.objectives.distill",
    "sft": "llmfab.training.objectives.sft.objective",
    "rl": "llmfab.training.objectives.rl",
}


def objective_module(name: str) -> ModuleType | None:
    """The module of objective ``name``; None for one the API knows but no module implements."""
    return importlib.import_module(MODULES[name]) if name in MODULES else None
